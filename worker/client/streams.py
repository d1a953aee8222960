"""Pass-through wrappers that read the usage of a streamed AI call as it goes by.

A wrapper hands every chunk or event on unchanged and shows the usage pieces to a sink (the
call's `UsageTracker`); when the stream ends (exhausted, closed, left by its `with` block,
garbage-collected, or broken by an exception) it calls `on_end(failed)` once. Sync and async
iterables are wrapped; so are the SDKs' stream managers (Anthropic `messages.stream()`,
OpenAI `chat.completions.stream()` / `responses.stream()`), whose own stream is handed to the
application as is and whose accumulated message is read when the `with` block ends, however
the application consumed it (`text_stream`, `get_final_message()`, ...).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Generic, Literal, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Kind = Literal["sync", "async", "dual", "awaitable", "manager", "async_manager"]


class Sink(Protocol):
    """Where the wrappers show what goes by (a UsageTracker)."""

    def feed(self, item: Any) -> None:
        """Read one chunk, event or message; never raises."""

    def opened(self, stream: Any) -> None:
        """See the stream object itself, before its chunks; never raises."""


OnEnd = Callable[[bool], None] | None


def stream_kind(obj: Any) -> Kind | None:
    """How `obj` is streamed, or None when it is not a stream (a whole response); None too for
    an object that cannot be inspected (then read, and recorded unpriced, as a response)."""
    try:
        return _kind(obj)
    except Exception:
        # hasattr() lets any error but AttributeError through (a lazy proxy whose backend is
        # gone, say): the AI call has succeeded, so the object goes back to the application.
        return None


def _kind(obj: Any) -> Kind | None:
    if obj is None or isinstance(obj, str | bytes | bytearray | list | tuple | set | frozenset):
        return None
    if isinstance(obj, Mapping):
        # boto3's converse_stream() returns {"stream": EventStream, "ResponseMetadata": ...}.
        inner = obj.get("stream")
        return "sync" if inner is not None and hasattr(inner, "__iter__") else None
    if hasattr(obj, "model_dump"):  # a pydantic response: iterable, but over its fields
        return None
    if type(obj).__name__.endswith("StreamManager"):  # the SDKs' name for them
        return "async_manager" if hasattr(obj, "__aenter__") else "manager"
    if hasattr(obj, "__aiter__"):
        # LiteLLM's CustomStreamWrapper is both: the application may use `for` or `async for`.
        return "dual" if hasattr(obj, "__iter__") else "async"
    if hasattr(obj, "__iter__"):
        return "sync"
    if inspect.isawaitable(obj):
        return "awaitable"
    return None


class _Ending:
    """Calls on_end once, whatever way the stream ends; logs instead of raising."""

    _on_end: OnEnd = None
    _ended = True  # until __init__ has run: a half-built wrapper records nothing

    def __init__(self, sink: Sink, on_end: OnEnd) -> None:
        self._sink = sink
        self._on_end = on_end
        self._ended = False

    def _end(self, failed: bool) -> None:
        if self._ended:
            return
        self._ended = True
        if self._on_end is not None:
            try:
                self._on_end(failed)
            except Exception:  # never into the application
                log.exception("could not record the usage of a stream")

    def __getattr__(self, name: str) -> Any:
        # What the wrapper does not define is the wrapped object's (an SDK stream's
        # response, request_id, ...; a manager's own attributes).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._wrapped(), name)

    def _wrapped(self) -> Any:
        return self.__dict__.get("_stream")

    def __del__(self) -> None:
        # A stream the application dropped half-read (a `break` out of its loop) still
        # cost what was generated: record what was seen.
        with contextlib.suppress(Exception):  # interpreter teardown: logging may be gone
            self._end(False)


class TrackedStream(_Ending, Generic[T]):
    """A sync stream, passed through; also a context manager, as the SDKs' streams are."""

    def __init__(self, stream: Any, sink: Sink, on_end: OnEnd) -> None:
        self._stream = stream["stream"] if isinstance(stream, Mapping) else stream
        self._iterator: Iterator[T] | None = None
        super().__init__(sink, on_end)

    def __iter__(self) -> TrackedStream[T]:
        return self

    def __next__(self) -> T:
        try:
            if self._iterator is None:
                self._iterator = iter(self._stream)
            item = next(self._iterator)
        except StopIteration:
            self._end(False)
            raise
        except BaseException:
            self._end(True)
            raise
        self._sink.feed(item)
        return item

    def _close(self, failed: bool) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if callable(close):
                close()
        finally:
            self._end(failed)

    def close(self) -> None:
        """Close the underlying stream and record what was seen."""
        self._close(False)

    def __enter__(self) -> TrackedStream[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self._close(exc_type is not None)


class DualTrackedStream(TrackedStream[T]):
    """A stream that is both iterable and async-iterable (LiteLLM's CustomStreamWrapper, the
    same object for `completion(stream=True)` and `acompletion(stream=True)`): passed
    through to whichever of `for` and `async for` the application uses."""

    def __init__(self, stream: Any, sink: Sink, on_end: OnEnd) -> None:
        self._aiterator: AsyncIterator[T] | None = None
        super().__init__(stream, sink, on_end)

    def __aiter__(self) -> DualTrackedStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            if self._aiterator is None:
                self._aiterator = self._stream.__aiter__()
            item = await self._aiterator.__anext__()
        except StopAsyncIteration:
            self._end(False)
            raise
        except BaseException:
            self._end(True)
            raise
        self._sink.feed(item)
        return item

    async def aclose(self) -> None:
        """Close the underlying stream (its aclose, else its close) and record what was seen."""
        try:
            close = getattr(self._stream, "aclose", None) or getattr(self._stream, "close", None)
            if callable(close):
                result = close()
                if inspect.isawaitable(result):
                    await result
        finally:
            self._end(False)

    async def __aenter__(self) -> DualTrackedStream[T]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is not None:
            self._end(True)
        await self.aclose()


class AsyncTrackedStream(_Ending, Generic[T]):
    """An async stream (or an awaitable of one, such as `AsyncOpenAI`'s
    `create(stream=True)` coroutine), passed through."""

    _pending: Awaitable[Any] | None = None

    def __init__(self, stream: Any, sink: Sink, on_end: OnEnd) -> None:
        self._pending: Awaitable[Any] | None = stream if inspect.isawaitable(stream) else None
        self._stream: Any = None if self._pending is not None else stream
        self._iterator: AsyncIterator[T] | None = None
        super().__init__(sink, on_end)

    def __aiter__(self) -> AsyncTrackedStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            if self._iterator is None:
                if self._pending is not None:
                    # Forgotten before the await: a request that fails is a call to record.
                    pending, self._pending = self._pending, None
                    self._stream = await pending
                    self._sink.opened(self._stream)
                if not hasattr(self._stream, "__aiter__"):
                    # Not a stream after all: read it as a whole response.
                    log.warning(
                        "track_stream: %s is not an async stream; read as a response",
                        type(self._stream).__name__,
                    )
                    self._sink.feed(self._stream)
                    raise StopAsyncIteration
                self._iterator = self._stream.__aiter__()
            item = await self._iterator.__anext__()
        except StopAsyncIteration:
            self._end(False)
            raise
        except BaseException:
            self._end(True)
            raise
        self._sink.feed(item)
        return item

    def _end(self, failed: bool) -> None:
        if self._ended:
            return
        if self._pending is not None:
            # The awaitable was never awaited: no request was sent, there is nothing to record.
            self._ended = True
            if inspect.iscoroutine(self._pending):
                self._pending.close()
            return
        super()._end(failed)

    async def _close(self, failed: bool) -> None:
        try:
            close = getattr(self._stream, "aclose", None) or getattr(self._stream, "close", None)
            if callable(close):
                result = close()
                if inspect.isawaitable(result):
                    await result
        finally:
            self._end(failed)

    async def close(self) -> None:
        """Close the underlying stream and record what was seen."""
        await self._close(False)

    aclose = close

    async def __aenter__(self) -> AsyncTrackedStream[T]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        await self._close(exc_type is not None)


#: Where the SDKs' stream helpers keep the message accumulated so far: Anthropic
#: MessageStream, OpenAI ChatCompletionStream, OpenAI ResponseStream. The last keeps the
#: response.completed Response only in its private state (its get_final_response() would
#: consume the stream); tests/test_sdk_streams.py pins it.
SNAPSHOTS = (
    ("current_message_snapshot",),
    ("current_completion_snapshot",),
    ("_state", "_completed_response"),
)


def final_snapshot(stream: Any) -> Any:
    """The message an SDK stream helper has accumulated so far, or None."""
    for path in SNAPSHOTS:
        found = stream
        try:
            for name in path:
                found = getattr(found, name)
        except Exception:  # noqa: S112 - not this helper, or nothing accumulated yet (they assert)
            continue
        if found is not None:
            return found
    return None


class TrackedStreamManager(_Ending):
    """An SDK stream manager (`with client.messages.stream(...) as stream:`); sync or async.
    `with` gives the SDK's own stream object; its accumulated message is read at exit."""

    def __init__(self, manager: Any, sink: Sink, on_end: OnEnd) -> None:
        self._manager = manager
        self._stream: Any = None
        super().__init__(sink, on_end)

    def _wrapped(self) -> Any:
        return self._manager

    def _finish(self, failed: bool) -> None:
        if self._stream is not None:
            snapshot = final_snapshot(self._stream)
            if snapshot is not None:
                self._sink.feed(snapshot)
        self._end(failed)

    def __enter__(self) -> Any:
        try:
            self._stream = self._manager.__enter__()
        except BaseException:  # the request itself failed
            self._end(True)
            raise
        return self._stream

    def __exit__(self, exc_type: type[BaseException] | None, *rest: Any) -> Any:
        try:
            return self._manager.__exit__(exc_type, *rest)
        finally:
            self._finish(exc_type is not None)

    async def __aenter__(self) -> Any:
        try:
            self._stream = await self._manager.__aenter__()
        except BaseException:
            self._end(True)
            raise
        return self._stream

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: Any) -> Any:
        try:
            return await self._manager.__aexit__(exc_type, *rest)
        finally:
            self._finish(exc_type is not None)


def wrap(stream: Any, kind: Kind, sink: Sink, on_end: OnEnd) -> Any:
    """The pass-through wrapper for a stream of `kind` (see stream_kind)."""
    if kind == "sync":
        return TrackedStream[Any](stream, sink, on_end)
    if kind == "dual":
        return DualTrackedStream[Any](stream, sink, on_end)
    if kind in ("async", "awaitable"):
        return AsyncTrackedStream[Any](stream, sink, on_end)
    return TrackedStreamManager(stream, sink, on_end)
