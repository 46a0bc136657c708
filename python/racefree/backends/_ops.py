"""One definition per cache operation, run synchronously or awaited.

A backend writes each operation once, as a generator method: it makes the
key and pickles on the caller's side, and yields each store call as
``(bound store method, args)``. ``store_operation`` turns it into the sync
method (each call made directly) and its async twin (each call made
through the store's ``a``-prefixed method, which returns an asyncio future
completed from the extension's runtime). A store call's exception is
thrown back into the generator at its ``yield``, so one ``try``/``except``
serves both.

    @store_operation
    def get(self, key, default=None, version=None):
        item = yield self._store.get, (self._key(key, version),)
        ...

The class decorator ``with_async_twins`` adds ``aget`` etc. for every
store operation of the class.
"""

import functools


def _run(steps):
    try:
        call, args = next(steps)
        while True:
            try:
                result = call(*args)
            except Exception as error:  # handed to the operation, which may handle it
                call, args = steps.throw(error)
            else:
                call, args = steps.send(result)
    except StopIteration as done:
        return done.value


def _async_twin(call):
    # store.get -> store.aget: the same call, returning an awaitable.
    return getattr(call.__self__, "a" + call.__name__)


async def _arun(steps):
    try:
        call, args = next(steps)
        while True:
            try:
                result = await _async_twin(call)(*args)
            except Exception as error:
                call, args = steps.throw(error)
            else:
                call, args = steps.send(result)
    except StopIteration as done:
        return done.value


def store_operation(steps):
    """The sync method for the generator method ``steps``; its async twin
    is the ``asynchronous`` attribute of the result."""

    @functools.wraps(steps)
    def method(self, *args, **kwargs):
        return _run(steps(self, *args, **kwargs))

    @functools.wraps(steps)
    async def asynchronous(self, *args, **kwargs):
        return await _arun(steps(self, *args, **kwargs))

    asynchronous.__name__ = "a" + steps.__name__
    asynchronous.__qualname__ = asynchronous.__qualname__.rsplit(".", 1)[0] + "." + asynchronous.__name__
    method.asynchronous = asynchronous
    return method


def with_async_twins(cls):
    """Class decorator: ``a<name>`` for every store operation ``<name>``."""
    for name, value in list(vars(cls).items()):
        twin = getattr(value, "asynchronous", None)
        if twin is not None:
            setattr(cls, "a" + name, twin)
    return cls
