"""Responses use cases (docs/responses.md), free of HTTP and WebSocket: prepare a create body, run it through
the chat service, keep what ``store`` asks for, rebuild a conversation from ``previous_response_id``.

The chat service does the work (keys, allow-lists, limits and charging, cache, groups, retries,
fallbacks, the status window, the resume log, drain, metrics, traces): a Responses call is a chat
call whose request was translated (``request.py``) and whose chunks are
turned into Responses events (``events.py``) by ``ResponseRun``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec
import structlog

from app.access.keys import Caller
from app.api.responses.errors import PreviousResponseNotFound, ResponseNotFound, ResponseStoreUnavailable
from app.api.responses.events import Event, ResponseEvents
from app.api.responses.request import (
    chat_request as build_chat_request,
)
from app.api.responses.request import (
    input_items,
    reasoning_effort,
    response_format,
    to_messages,
    translate_tool_choice,
    translate_tools,
)
from app.api.responses.store import CHAIN_HINT, ResponseStore, StoredResponse
from app.api.responses.wire import ResponsesCreate
from app.config.settings import Settings
from app.core.service import ChatService
from app.core.stream import ChatStream
from app.domain.chat_request import ChatCompletionInput
from app.domain.errors import ContextLengthExceeded, GatewayError
from app.domain.events import CLIENT_DISCONNECTED, NO_GUARD, StreamEvent
from app.domain.ids import random_hex
from app.limits.limiter import Admission
from app.providers.resilient import Trail
from app.resume.service import Resumes

logger = structlog.get_logger("app.responses")
_encode = msgspec.json.encode

#: A chain longer than this is refused: a bound on the walk, far past any real conversation.
MAX_CHAIN: Final = 10_000
#: The most a chain may rebuild (its records' input and output items, as stored): past any model's
#: context window (the largest take ~1M tokens, ~4 MB of text), and the bound on what one request
#: makes this process read from the store. A chain grows a record per call, failed calls included.
MAX_CONVERSATION_BYTES: Final = 32 * 1024 * 1024
#: Links (a response id -> the one it follows) this process remembers, the most recent first kept.
LINKS_KEPT: Final = 10_000
#: How long a cancel waits for the background run to record its end before answering.
CANCEL_WAIT_S: Final = 2.0
_SUMMARIES: Final = frozenset({"auto", "concise", "detailed"})


def new_response_id() -> str:
    return "resp_" + random_hex(16)


class Prepared(msgspec.Struct):
    """A create body checked and translated, ready to run."""

    create: ResponsesCreate
    chat: ChatCompletionInput
    skeleton: dict[str, Any]
    own_input: list[dict[str, Any]]
    conversation: list[dict[str, Any]]  # the previous responses' items, then this request's own
    namespaces: dict[str, str]
    omitted: list[str]
    chain: list[str] = []  # the ids of the responses it follows, the nearest first (``CHAIN_HINT`` at most)

    @property
    def id(self) -> str:
        return str(self.skeleton["id"])


def skeleton_of(create: ResponsesCreate, response_id: str, tools_echo: list[dict[str, Any]]) -> dict[str, Any]:
    """The response object as OpenAI echoes the request's settings, before any output."""
    choice: Any = create.tool_choice if create.tool_choice is not None else "auto"
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "name": choice.get("name")}
    reasoning = create.reasoning or {}
    summary = reasoning.get("summary")
    text = dict(create.text or {})
    text.setdefault("format", {"type": "text"})
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": bool(create.background),
        "error": None,
        "incomplete_details": None,
        "instructions": create.instructions,
        "max_output_tokens": create.max_output_tokens,
        "max_tool_calls": create.max_tool_calls,
        "model": create.model,
        "output": [],
        "parallel_tool_calls": create.parallel_tool_calls is not False,
        "previous_response_id": create.previous_response_id,
        "prompt_cache_key": create.prompt_cache_key,
        "reasoning": {
            "effort": reasoning.get("effort"),
            "summary": summary if isinstance(summary, str) and summary in _SUMMARIES else None,
        },
        "safety_identifier": create.safety_identifier,
        "store": create.store is not False,
        "temperature": create.temperature,
        "text": text,
        "tool_choice": choice,
        "tools": tools_echo,
        "top_p": create.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": create.user,
        "metadata": dict(create.metadata or {}),
    }


def with_ids(items: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """Input items as kept: each with an id (``input_items`` lists them by it)."""
    base = response_id.removeprefix("resp_")
    kept = []
    for i, item in enumerate(items):
        item = dict(item)
        if not isinstance(item.get("id"), str):
            kind = item.get("type", "message")
            prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}.get(kind, "item")
            item["id"] = f"{prefix}_{base}_in{i}"
        item.setdefault("type", "message")
        if item["type"] in ("message", "function_call", "function_call_output"):
            item.setdefault("status", "completed")  # what OpenAI's listed items carry
        if item["type"] == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        if item["type"] == "message" and item.get("role") == "assistant" and isinstance(item.get("content"), list):
            item["content"] = [
                {**p, "annotations": p.get("annotations") or []} if p.get("type") == "output_text" else p
                for p in item["content"]
                if isinstance(p, dict)
            ]
        kept.append(item)
    return kept


class ResponseRun:
    """One response being produced: its events, and its record saved as it starts and as it ends."""

    def __init__(self, service: ResponsesService, prepared: Prepared, owner: str) -> None:
        self.service = service
        self.prepared = prepared
        self.owner = owner
        self.events = ResponseEvents(prepared.skeleton, prepared.namespaces)
        self.stream: ChatStream | None = None
        self.saved_end = False
        self.deleted = False  # deleted while running: its end is not saved either
        self._writers = 0  # writers pumping the stream now: the end is theirs to save

    @property
    def id(self) -> str:
        return self.prepared.id

    def record(self, response: dict[str, Any]) -> StoredResponse:
        create = self.prepared.create
        return StoredResponse(
            id=self.id,
            owner=self.owner,
            response=response,
            input=self.prepared.own_input,
            previous_response_id=create.previous_response_id,
            chain=self.prepared.chain,
            stream_id=self.stream.id if self.stream is not None else None,
            namespaces=self.prepared.namespaces,
            stored=create.store is not False,
        )

    def feed(self, raw: bytes) -> list[Event]:
        return self.events.feed(raw)

    async def finish(self, event: StreamEvent | None) -> list[Event]:
        """The last events (saved first, so that a GET right after the stream sees the end)."""
        events = self.events.finish(event.error if event is not None else None)
        await self.save_end()
        return events

    async def save_end(self) -> None:
        if self.saved_end:
            return
        self.saved_end = True
        self.service.running.pop(self.id, None)
        if not self.deleted:
            await self.service.save(self.record(self.events.snapshot()))

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a writer's pump: while it runs, the end is saved by its ``finish``; a writer that
        leaves before the end (its client went) hands the saving back to ``closed``."""
        self._writers += 1
        try:
            yield
        finally:
            self._writers -= 1
            if self.stream is not None and self.stream.outcome is not None:
                self.closed(self.stream)

    def closed(self, stream: ChatStream) -> None:
        """The stream closed and no writer will see its end (its client left): the response is what
        the stream's log holds (a detached stream may have run to its end without anyone), else it
        ends cancelled or failed."""
        if self.saved_end or self._writers:
            return
        rebuilt = self._from_log(stream)
        if rebuilt is not None:
            self.events = rebuilt
        elif not self.events.ended:
            left = stream.outcome in ("cancelled", "client_disconnected")
            self.events.status = "cancelled" if left else "failed"
            self.events.ended = True
        self.service.spawn(self.save_end())

    def _from_log(self, stream: ChatStream) -> ResponseEvents | None:
        log = stream.log
        if log is None:
            return None
        events = ResponseEvents(self.prepared.skeleton, self.prepared.namespaces)
        seq = 0
        try:
            while (event := log.after(seq)) is not None:
                seq = event.seq
                if event.chunk is not None:
                    events.feed(event.chunk.raw)
                else:
                    events.finish(event.error)
                    return events
        except LookupError:
            return None  # trimmed: the start of the response is gone
        return None


class _BackgroundWriter:
    """A background response's writer: it writes to nobody, it only keeps the response's state."""

    def __init__(self, run: ResponseRun) -> None:
        self.run = run

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        self.run.feed(raw)

    async def end(self, event: StreamEvent) -> None:
        await self.run.finish(event)

    def cancelled(self, stream: ChatStream) -> None:
        return None


class ResponsesService:
    def __init__(
        self,
        settings: Settings,
        chat: ChatService,
        store: ResponseStore,
        resumes: Resumes | None,
        *,
        max_conversation_bytes: int = MAX_CONVERSATION_BYTES,
    ) -> None:
        self.settings = settings
        self.max_conversation_bytes = max_conversation_bytes
        self.chat = chat
        self.store = store
        self.resumes = resumes
        #: Responses running in this process, by id (GET shows their progress, cancel stops them).
        self.running: dict[str, ResponseRun] = {}
        #: The store is shared by replicas (Redis): a response is saved as it starts, not only as it ends.
        self.shared = settings.responses.store == "redis"
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Which response each response this process made or read follows. A link never changes, so
        #: a chain known here is read from the store in one batch; the records themselves are still
        #: read (a deleted or expired one is seen).
        self._links: OrderedDict[str, str | None] = OrderedDict()

    # -- preparing -----------------------------------------------------------------------------

    async def prepare(
        self, create: ResponsesCreate, caller: Caller, memory: dict[str, StoredResponse] | None = None
    ) -> Prepared:
        response_id = new_response_id()
        own = input_items(create.input)
        tools = translate_tools(create.tools)
        choice = translate_tool_choice(create.tool_choice, tools)
        fmt = response_format(create.text)
        effort = reasoning_effort(create.reasoning)
        prior, chain = await self.conversation(create.previous_response_id, caller, memory)
        conversation = prior + own
        messages = to_messages(create.instructions, conversation)
        chat = build_chat_request(create, messages, tools, choice, fmt, effort)
        skeleton = skeleton_of(create, response_id, tools.echo)
        return Prepared(
            create=create,
            chat=chat,
            skeleton=skeleton,
            own_input=with_ids(own, response_id),
            conversation=conversation,
            namespaces=tools.namespaces,
            omitted=tools.omitted,
            chain=chain[:CHAIN_HINT],
        )

    async def conversation(
        self, previous_id: str | None, caller: Caller, memory: dict[str, StoredResponse] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The items of the chain ending at ``previous_id``, oldest first, and the chain's ids, the
        nearest first. Each record is read once, and in batches: the first record names the ids
        before it (its ``chain``), so a chain of up to ``CHAIN_HINT`` + 1 responses costs two store
        round trips whatever its length (records without that list are walked one by one), and one
        when this process made or read the previous response (it remembers the links)."""
        hops: list[StoredResponse] = []
        seen: set[str] = set()
        size = 0
        batch = [previous_id] if previous_id is not None else []
        while batch and len(batch) <= CHAIN_HINT and (known := self._links.get(batch[-1])) is not None:
            batch.append(known)
        while batch:
            records = await self._read(batch, memory)
            for want, record in zip(batch, records, strict=True):
                expected = hops[-1].previous_response_id if hops else previous_id
                if want != expected or want in seen:
                    break  # past the end of the chain (or a batch that no longer follows its links)
                if record is None or record.owner != caller.scope:
                    raise PreviousResponseNotFound(
                        f"Previous response {want[:128]!r} not found (unknown, expired, or not yours).",
                        param="previous_response_id",
                    )
                size += len(_encode(record.input)) + len(_encode(record.response.get("output")))
                if len(hops) >= MAX_CHAIN or size > self.max_conversation_bytes:
                    raise ContextLengthExceeded(
                        f"The conversation before this response is over {MAX_CHAIN} responses or "
                        f"{self.max_conversation_bytes} bytes: start a new one, or send the input you want kept.",
                        param="previous_response_id",
                    )
                seen.add(want)
                hops.append(record)
                self._remember(record)
            last = hops[-1]
            following = last.previous_response_id
            if following is None or following in seen:
                break
            hint = last.chain[:CHAIN_HINT]
            batch = hint if hint[:1] == [following] else [following]
        items: list[dict[str, Any]] = []
        for record in reversed(hops):
            items += record.input
            items += [item for item in record.response.get("output", []) if isinstance(item, dict)]
        return items, [record.id for record in hops]

    async def _read(
        self, response_ids: list[str], memory: dict[str, StoredResponse] | None
    ) -> list[StoredResponse | None]:
        """Records from the socket's memory, else running here, else the store (one ``get_many``);
        a response made with ``store: false`` is None except from the socket's own memory."""
        found: list[StoredResponse | None] = []
        wanted: list[int] = []
        for i, response_id in enumerate(response_ids):
            record = memory.get(response_id) if memory is not None else None
            if record is None:
                run = self.running.get(response_id)
                if run is not None:
                    record = run.record(run.events.snapshot())
                    record = record if record.stored else None
                else:
                    wanted.append(i)
            found.append(record)
        if wanted:
            try:
                fetched = await self.store.get_many([response_ids[i] for i in wanted])
            except Exception as exc:
                raise ResponseStoreUnavailable("The response store is unreachable.") from exc
            for i, record in zip(wanted, fetched, strict=True):
                found[i] = record if record is not None and record.stored else None
        return found

    # -- the store -----------------------------------------------------------------------------

    async def _get(self, response_id: str) -> StoredResponse | None:
        """A response running in this process (its progress), else the store's record."""
        run = self.running.get(response_id)
        if run is not None:
            return run.record(run.events.snapshot())
        try:
            return await self.store.get(response_id)
        except Exception as exc:
            raise ResponseStoreUnavailable("The response store is unreachable.") from exc

    def _remember(self, record: StoredResponse) -> None:
        links = self._links
        links[record.id] = record.previous_response_id
        links.move_to_end(record.id)
        if len(links) > LINKS_KEPT:
            links.popitem(last=False)

    async def save(self, record: StoredResponse) -> None:
        if record.stored:
            self._remember(record)
        elif record.stream_id is None:
            return  # unstored and no stream to resume: nothing could ever read it
        ttl = self.settings.responses.store_ttl_s if record.stored else self.settings.streaming.resume_ttl_s
        try:
            await self.store.put(record, ttl)
        except Exception as exc:  # the answer was given; a lost save is a log line, not the client's error
            logger.warning("response_save_failed", response_id=record.id, error=type(exc).__name__)

    async def owned(self, response_id: str, caller: Caller, *, stored_only: bool = True) -> StoredResponse:
        """The record of one of the caller's responses (404 otherwise, whatever the reason)."""
        record = await self._get(response_id)
        if record is None or record.owner != caller.scope or (stored_only and not record.stored):
            raise ResponseNotFound(
                f"No response {response_id[:128]!r} (unknown, expired, or not yours).", param="response_id"
            )
        return record

    async def delete(self, response_id: str, caller: Caller) -> None:
        await self.owned(response_id, caller)
        run = self.running.get(response_id)
        if run is not None:
            run.deleted = True
        try:
            await self.store.delete(response_id)
        except Exception as exc:
            raise ResponseStoreUnavailable("The response store is unreachable.") from exc

    # -- running ---------------------------------------------------------------------------------

    async def complete(
        self,
        prepared: Prepared,
        caller: Caller,
        admission: Admission | None,
        *,
        started_at: float,
        cache_control: str | None,
        traceparent: str | None,
        trail: Trail,
    ) -> tuple[dict[str, Any], str | None]:
        completion, cache_status = await self.chat.complete(
            prepared.chat,
            started_at=started_at,
            caller=caller,
            cache_control=cache_control,
            traceparent=traceparent,
            trail=trail,
            admission=admission,
        )
        run = ResponseRun(self, prepared, caller.scope)
        run.events.feed_completion(completion.raw)
        await run.finish(None)
        return run.events.snapshot(), cache_status

    async def open(
        self,
        prepared: Prepared,
        caller: Caller,
        admission: Admission | None,
        transport: str,
        *,
        started_at: float | None = None,
        cache_control: str | None = None,
        traceparent: str | None = None,
    ) -> ResponseRun:
        """The chat stream opened and the response's record saved as in progress."""
        run = ResponseRun(self, prepared, caller.scope)
        stream = await self.chat.open_stream(
            prepared.chat,
            transport,
            started_at=started_at,
            caller=caller,
            cache_control=cache_control,
            traceparent=traceparent,
            admission=admission,
        )
        run.stream = stream
        previous: Callable[[ChatStream], None] | None = stream.on_close

        def on_close(s: ChatStream) -> None:
            if previous is not None:
                previous(s)
            run.closed(s)

        stream.on_close = on_close
        self.running[run.id] = run
        if self.shared:
            # Other replicas learn of it from the store (this one serves it from ``running``).
            try:
                await self.save(run.record(run.events.snapshot()))
            except BaseException:
                # The client left during the save (a slow Redis): no caller will pump or close the
                # stream it never got, so it is closed here, which settles its admission's lease.
                stream.close(CLIENT_DISCONNECTED)
                raise
        return run

    async def start_background(
        self,
        prepared: Prepared,
        caller: Caller,
        admission: Admission | None,
        transport: str,
        *,
        traceparent: str | None,
    ) -> ResponseRun:
        """A response that runs to its end without a client; its stream log serves readers.
        ``transport``: what the client asked for (``sse`` or ``json``), as the metrics label it."""
        run = await self.open(prepared, caller, admission, transport, traceparent=traceparent)
        assert run.stream is not None
        self.spawn(self._pump(run, run.stream))
        return run

    async def _pump(self, run: ResponseRun, stream: ChatStream) -> None:
        with contextlib.suppress(Exception), run.writing():
            await stream.pump(_BackgroundWriter(run), NO_GUARD)

    async def cancel(self, response_id: str, caller: Caller) -> StoredResponse:
        record = await self.owned(response_id, caller)
        run = self.running.get(response_id)
        if run is not None and run.stream is not None:
            run.stream.stop("The response was cancelled.")
        elif record.response.get("status") in ("in_progress", "queued") and record.stream_id and self.resumes:
            with contextlib.suppress(GatewayError):
                await self.resumes.stop(record.stream_id, caller.scope)  # running on another replica
        deadline = time.monotonic() + CANCEL_WAIT_S
        while response_id in self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return await self.owned(response_id, caller)

    def spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
