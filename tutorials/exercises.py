"""The "Your turn" exercises of the tutorials: check the learner's code, or the provided solution.

Each exercise in a notebook is four cells:

1. a markdown cell ``## Your turn: ...`` saying what to write and what the check compares;
2. **Your turn** -- a function for the learner to write, which starts as
   ``raise NotImplementedError``;
3. **Solution** -- the same function written out, named ``<name>_solution``, stored with its
   source hidden (cell metadata ``{"jupyter": {"source_hidden": true}, "tags": ["solution"]}``:
   click to reveal it in Jupyter; try first);
4. a call ``your_turn(learner_function, solution_function, check)``, where ``check(f)``
   asserts that ``f`` gives what the library gives.

``your_turn`` runs ``check`` on the learner's function; while the function itself still raises
``NotImplementedError`` it says so and runs ``check`` on the solution instead, so the notebook
(and CI, which executes every notebook) still tests the lesson.  A learner's function that
is filled in but wrong fails loudly, with the check's message.  ``tests/test_tutorials.py``
checks that every notebook has such an exercise.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["your_turn"]


def _raised_by(function: Callable, error: BaseException) -> bool:
    """Whether ``error`` was raised inside ``function``'s own code (not in code it called)."""
    code = getattr(function, "__code__", None)
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return code is not None and last is not None and last.tb_frame.f_code is code


def your_turn(learner: Callable, solution: Callable, check: Callable[[Callable], None]) -> str:
    """Run ``check`` on the learner's function, or on the solution while it is not filled in.

    "Not filled in" means the learner's function itself raised ``NotImplementedError`` (the
    ``raise NotImplementedError`` it starts with); a ``NotImplementedError`` from deeper down, in
    code the function or the check called, is a real error and is raised.  Returns
    ``"learner"`` or ``"solution"``: whose code passed the check.  Raises ``AssertionError``
    naming the solution if the provided solution fails its own check (the lesson is out of date).
    """
    name = getattr(learner, "__name__", "your function")
    try:
        check(learner)
    except NotImplementedError as error:
        if not _raised_by(learner, error):
            raise
        try:
            check(solution)
        except AssertionError as failure:
            raise AssertionError(
                f"the provided {getattr(solution, '__name__', 'solution')} fails its own check: {failure}"
            ) from failure
        print(f"{name} is not filled in yet: the provided solution passes the check. Now write your own!")
        return "solution"
    print(f"{name}: your code agrees with the library. Well done.")
    return "learner"
