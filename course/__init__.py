"""The course's lesson code, generated from the chapter notebooks (one module a chapter).

Each module is written by `make export` from the cells of chapters/NN_name.ipynb whose first line is
`#| export`: edit the notebook, never these files (a test fails when they are stale). Chapters import
each other absolutely, e.g. `from course.ch02_autograd import Value`.
"""
