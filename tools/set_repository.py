"""Point every Colab badge and setup cell at the repository named in pyproject.toml's [project.urls].

    python tools/set_repository.py            # rewrite README.md and chapters/**/*.ipynb to match
    python tools/set_repository.py --check    # exit 1 and list the files that disagree (the tests do this)

Publishing the course under another address is then one line: change `Repository` in pyproject.toml and
run this script. Standard library only; notebooks are edited as text, so nothing else in them changes.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# github.com/OWNER/NAME as the badges (colab.research.google.com/github/OWNER/NAME/blob/…), the setup
# cells (git clone https://github.com/OWNER/NAME.git) and the README's prose write it
MENTION = re.compile(r"(colab\.research\.google\.com/github/|https://github\.com/)([\w.-]+/[\w.-]+?)"
                     r"(?=/blob/|\.git\b|[\s)\]\"'`,;]|$)")


def repository() -> str:
    """OWNER/NAME from `Repository = "https://github.com/OWNER/NAME"` in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'^Repository\s*=\s*"https://github\.com/([\w.-]+/[\w.-]+?)/?"', text, re.M)
    if found is None:
        raise SystemExit('pyproject.toml needs [project.urls] Repository = "https://github.com/OWNER/NAME"')
    return found.group(1)


def files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "chapters").rglob("*.ipynb"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the files that disagree")
    args = parser.parse_args(argv)
    target, wrong = repository(), []
    for path in files():
        text = path.read_text(encoding="utf-8")
        fixed = MENTION.sub(lambda m: m.group(1) + target, text)
        if fixed != text:
            wrong.append(path.relative_to(ROOT).as_posix())
            if not args.check:
                path.write_text(fixed, encoding="utf-8")
    if args.check and wrong:
        print(f"these files name another repository than {target} (pyproject.toml): {', '.join(wrong)}; "
              f"run python tools/set_repository.py")
        return 1
    print(f"{len(wrong)} files now point at {target}" if wrong else f"every badge and setup cell points at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
