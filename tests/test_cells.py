"""utils.cells: a class written across notebook cells."""
from utils import add_to_class


def test_add_to_class_makes_a_method_for_new_and_existing_objects():
    class Point:
        def __init__(self, x):
            self.x = x

    before = Point(2)

    @add_to_class(Point)
    def double(self):
        return 2 * self.x

    assert before.double() == 4 and Point(3).double() == 6
    assert double(before) == 4          # the decorated function stays usable as it is
