"""One definition per cache operation, run synchronously or awaited.

A backend writes each operation once, as a generator method: it makes the
key and pickles on the caller's side, and marks each store call by
yielding it as ``(bound store method, args)``:

    @store_operation
    def get(self, key, default=None, version=None):
        item = yield self._store.get, (self._key(key, version),)
        ...

``store_operation`` compiles two plain functions from that source: the
sync method, where each marked call is made directly
(``self._store.get(key)``), and its async twin, where it is awaited
through the store's ``a``-prefixed method
(``await self._store.aget(key)``). Both keep the definition's file and
line numbers, so tracebacks and coverage point at it, and neither runs a
generator: the sync path costs what a hand-written method costs. A store
call's exception is raised at the marked call, so one ``try``/``except``
serves both.

The source must be readable (``inspect.getsource``): racefree's wheel
ships it; an application frozen without sources (PyInstaller's default)
must collect ``racefree`` as source.

The class decorator ``with_async_twins`` adds ``aget`` etc. for every
store operation of the class.
"""

import ast
import inspect
import textwrap
from collections.abc import Callable, Generator
from typing import Any

#: A store operation as written: a generator method yielding marked calls.
Steps = Callable[..., Generator[Any, Any, Any]]


class _MarkedCalls(ast.NodeTransformer):
    """Rewrites each ``yield call, (args)`` into the call itself, or into
    an await of the call's ``a``-prefixed twin."""

    def __init__(self, awaited: bool) -> None:
        self.awaited = awaited

    def visit_Yield(self, node: ast.Yield) -> ast.AST:
        marked = node.value
        if not (
            isinstance(marked, ast.Tuple)
            and len(marked.elts) == 2
            and isinstance(marked.elts[0], ast.Attribute)
            and isinstance(marked.elts[1], ast.Tuple)
        ):
            raise TypeError(
                f"line {node.lineno}: a store operation yields (store.method, (args...)), "
                f"not {ast.unparse(marked) if marked else 'nothing'}"
            )
        method, args = marked.elts
        assert isinstance(method, ast.Attribute) and isinstance(args, ast.Tuple)
        if self.awaited:
            method = ast.Attribute(value=method.value, attr="a" + method.attr, ctx=ast.Load())
        call = ast.Call(func=method, args=args.elts, keywords=[])
        replacement: ast.expr
        replacement = ast.Await(value=call) if self.awaited else call
        return ast.fix_missing_locations(ast.copy_location(replacement, node))

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        # Nested functions (e.g. a callback handed to the store) stay as written.
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef


def _compiled_pair(steps: Steps) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The sync function and its async twin compiled from ``steps``' source."""
    name = steps.__qualname__
    if steps.__code__.co_freevars:
        raise TypeError(f"store operation {name} closes over {steps.__code__.co_freevars}; define it at class level")
    try:
        lines, first_line = inspect.getsourcelines(steps)
    except (OSError, TypeError) as error:
        raise ImportError(
            f"racefree needs the Python source of {name} ({steps.__code__.co_filename}): {error}. "
            "An application frozen without sources must collect racefree as source (PyInstaller: "
            "module_collection_mode={'racefree': 'py'})"
        ) from None
    source = textwrap.dedent("".join(lines))
    return _compiled(steps, source, first_line, awaited=False), _compiled(steps, source, first_line, awaited=True)


def _compiled(steps: Steps, source: str, first_line: int, awaited: bool) -> Callable[..., Any]:
    tree = ast.parse(source)
    ast.increment_lineno(tree, first_line - 1)
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    definition.decorator_list = []
    for index, statement in enumerate(definition.body):
        definition.body[index] = _MarkedCalls(awaited).visit(statement)
    name = definition.name
    if awaited:
        name = "a" + name
        extra: dict[str, Any] = {"type_params": []} if "type_params" in ast.AsyncFunctionDef._fields else {}
        tree.body[0] = ast.copy_location(
            ast.AsyncFunctionDef(
                name=name,
                args=definition.args,
                body=definition.body,
                decorator_list=[],
                returns=definition.returns,
                type_comment=None,
                **extra,
            ),
            definition,
        )
    namespace: dict[str, Any] = {}
    exec(compile(tree, steps.__code__.co_filename, "exec"), steps.__globals__, namespace)
    function: Callable[..., Any] = namespace[name]
    function.__module__ = steps.__module__
    function.__doc__ = steps.__doc__
    function.__qualname__ = steps.__qualname__.rsplit(".", 1)[0] + "." + name
    return function


def store_operation(steps: Steps) -> Any:
    """The sync method for the generator method ``steps``; its async twin
    is the ``asynchronous`` attribute of the result."""
    method, asynchronous = _compiled_pair(steps)
    setattr(method, "asynchronous", asynchronous)  # read back by with_async_twins
    return method


def with_async_twins(cls: type[Any]) -> type[Any]:
    """Class decorator: ``a<name>`` for every store operation ``<name>``,
    unless the class defines that twin itself."""
    for name, value in list(vars(cls).items()):
        twin = getattr(value, "asynchronous", None)
        if twin is not None and "a" + name not in vars(cls):
            setattr(cls, "a" + name, twin)
    return cls
