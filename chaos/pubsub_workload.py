"""Stream and fan-out processes of a chaos run, and the final full read of the stream.

Streams (``--workload stream``), on one stream without retention:

* appenders ``a{k}`` append records with ids ``a{k}-{n}`` (one to three per
  call); a call whose outcome was not ``ok`` is sent again with the *same* ids
  (up to ``resend_limit`` times), which is what the stream's id deduplication
  is for, and what the checker holds it to;
* readers ``r{k}`` read forward from offset 0 with a long poll, each from the
  ``next_offset`` of its previous read, and now and then replay from an
  earlier offset;
* group consumers ``g{k}`` read with ``group=g{k}`` (which starts at the
  group's committed offset), commit the ``next_offset`` they reached (only
  when it is beyond the last offset they had acknowledged: one committer per
  group, never moving it back itself), and sometimes read the committed
  offset back (``GET .../groups/{g}``).

Every read records ``[offset, id, timestamp]`` of each record (the append
timestamp is fixed when the record is appended, so it tells one append of an
id from another), plus ``next_offset`` and ``first_offset``.

Fan-out (``--workload fanout``): publishers ``x{k}`` publish ids ``x{k}-{n}``
to a ``fanout`` exchange bound to every queue of ``fanout_queues`` (a not-ok
publish is sent again with the same ids, as appends are: deduplication is per
queue), and one consumer per bound queue (``f{k}``) receives and acks as the
queue consumers do. The drain empties the bound queues too.

After the drain, :func:`final_stream_read` reads the whole stream from offset
0 (process ``drain-stream``) and every group's committed offset; the checker
compares everything seen during the run with it.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from chaos.history import HistoryWriter, Outcome
from chaos.stream_checker import FINAL_READER
from chaos.workload import (
    ProcessFn,
    Workload,
    WorkloadConfig,
    _Process,
    _returned_ids,
    body_for,
    receive_and_ack,
)
from raftmq.client import Client, Message
from raftmq.pubsub import Routed, StreamBatch

__all__ = [
    "FINAL_READER",
    "declare",
    "final_stream_read",
    "group_name",
    "processes",
    "record_body",
]

log = logging.getLogger(__name__)

FINAL_READ_MAX = 1000
GROUP_CHECK_PROBABILITY = 0.2
RETRY_PAUSE_S = 0.2


def record_body(record_id: str) -> str:
    """The body a stream record with ``record_id`` carries (checked on every read)."""
    return f"chaos record {record_id}"


def group_name(k: int) -> str:
    return f"g{k}"


def declare(client: Client, config: WorkloadConfig) -> None:
    """Creates what the selected pub/sub workloads use (idempotent: 200 when it exists)."""
    if "stream" in config.workloads:
        client.declare_stream(config.stream)  # no retention: the final read sees every record
    if "fanout" in config.workloads:
        client.declare_exchange(config.exchange, "fanout")
        for queue in config.fanout_queues:
            client.declare_queue(queue, visibility_timeout=config.visibility_timeout)
            client.bind(config.exchange, queue, "")


def processes(config: WorkloadConfig) -> list[tuple[str, ProcessFn, int]]:
    """The stream and fan-out processes of the selected workloads, for ``Workload.extra``."""
    out: list[tuple[str, ProcessFn, int]] = []
    if "stream" in config.workloads:
        out += [(f"a{k}", _append, k) for k in range(config.appenders)]
        out += [(f"r{k}", _read_forward, k) for k in range(config.readers)]
        out += [(f"g{k}", _group_consumer, k) for k in range(config.groups)]
    if "fanout" in config.workloads:
        out += [(f"x{k}", _fan_publish, k) for k in range(config.fanout_publishers)]
        out += [(f"f{k}", _fan_consume, k) for k in range(len(config.fanout_queues))]
    return out


class _Pace:
    """Exponential gaps that average ``rate`` calls per second; no catching up after a slow call."""

    def __init__(self, workload: Workload, rng: random.Random, rate: float) -> None:
        self.workload = workload
        self.rng = rng
        self.rate = max(rate, 1e-6)
        self.next_at = workload.history.now()

    def wait(self, size: int) -> None:
        now = self.workload.history.now
        self.next_at = max(self.next_at + self.rng.expovariate(self.rate / size), now())
        self.workload.stopping.wait(self.next_at - now())  # pacing, not synchronisation


def _batch_fields(batch: StreamBatch) -> dict[str, Any]:
    records = batch.records
    fields: dict[str, Any] = {
        "records": [[r.offset, r.id, r.timestamp] for r in records],
        "next_offset": batch.next_offset,
        "first_offset": batch.first_offset,
    }
    bad = [r.offset for r in records if r.id is None or r.body != record_body(r.id)]
    if bad:
        fields["bad_bodies"] = bad
    return fields


def read(
    proc: _Process,
    stream: str,
    *,
    offset: int | None = None,
    group: str | None = None,
    limit: int,
    wait: float,
    **extra: Any,
) -> tuple[Outcome, StreamBatch | None]:
    """One recorded stream read, from ``offset`` or from ``group``'s committed offset."""
    where: dict[str, Any] = {"offset": offset} if group is None else {"group": group}
    return proc.call(
        "read",
        functools.partial(
            proc.client.read, stream, offset=offset, group=group, max=limit, wait=wait
        ),
        {"stream": stream, **where, "max": limit, "wait": wait, **extra},
        _batch_fields,
    )


def _resending(
    workload: Workload,
    name: str,
    k: int,
    count: int,
    rate: float,
    send: Callable[[_Process, list[str], int], Outcome],
) -> None:
    """The loop of appenders and exchange publishers: new ids, or the last ones again."""
    cfg = workload.config
    rng = random.Random(f"{cfg.seed}-{name}")
    proc = workload.process(name, k, count, cfg.client_timeout)
    pace = _Pace(workload, rng, rate / max(1, count))
    n = 0
    resend: list[str] | None = None
    sent = 0
    try:
        while not workload.stopping.is_set():
            if resend is not None and sent < cfg.resend_limit:
                ids, sent = resend, sent + 1
            else:
                size = 1 if rng.random() < 0.8 else rng.randint(2, 3)
                ids, sent = [f"{name}-{n + i}" for i in range(size)], 0
                n += size
            resend = None if send(proc, ids, sent) == "ok" else ids
            pace.wait(len(ids))
    except Exception:
        log.exception("%s crashed", name)
    finally:
        proc.close()


def _append(workload: Workload, name: str, k: int) -> None:
    cfg = workload.config

    def send(proc: _Process, ids: list[str], resent: int) -> Outcome:
        records = [Message(record_body(i), id=i) for i in ids]
        outcome, _ = proc.call(
            "append",
            functools.partial(proc.client.append, cfg.stream, records),
            {"stream": cfg.stream, "ids": ids, "resent": resent},
            lambda offsets: {"offsets": list(offsets)},
        )
        return outcome

    _resending(workload, name, k, cfg.appenders, cfg.append_rate, send)


def _fan_publish(workload: Workload, name: str, k: int) -> None:
    cfg = workload.config

    def routed_fields(ids: list[str], routed: Routed) -> dict[str, Any]:
        return {
            "routed": dict(routed.routed),
            "unroutable": routed.unroutable,
            **_returned_ids(ids, routed.ids),
        }

    def send(proc: _Process, ids: list[str], resent: int) -> Outcome:
        messages = [Message(body_for(i), id=i) for i in ids]
        outcome, _ = proc.call(
            "xpublish",
            functools.partial(proc.client.publish_to_exchange, cfg.exchange, "", messages),
            {
                "exchange": cfg.exchange,
                "queues": list(cfg.fanout_queues),
                "ids": ids,
                "resent": resent,
            },
            functools.partial(routed_fields, ids),
        )
        return outcome

    _resending(workload, name, k, cfg.fanout_publishers, cfg.fanout_rate, send)


def _read_forward(workload: Workload, name: str, k: int) -> None:
    cfg = workload.config
    rng = random.Random(f"{cfg.seed}-{name}")
    proc = workload.process(name, k, cfg.readers, cfg.client_timeout + cfg.receive_wait)
    position = 0
    try:
        while not workload.stopping.is_set():
            replay = position > 0 and rng.random() < cfg.replay_probability
            start = rng.randint(0, position - 1) if replay else position
            outcome, batch = read(
                proc,
                cfg.stream,
                offset=start,
                limit=rng.randint(1, cfg.read_max),
                wait=cfg.receive_wait,
                replay=replay,
            )
            if outcome == "ok" and batch is not None:
                position = max(position, batch.next_offset)
    except Exception:
        log.exception("reader %s crashed", name)
    finally:
        proc.close()


def _group_consumer(workload: Workload, name: str, k: int) -> None:
    cfg = workload.config
    rng = random.Random(f"{cfg.seed}-{name}")
    group = group_name(k)
    proc = workload.process(name, k, cfg.groups, cfg.client_timeout + cfg.receive_wait)
    acknowledged = 0  # the highest offset a commit of this process was acknowledged for
    try:
        while not workload.stopping.is_set():
            outcome, batch = read(
                proc,
                cfg.stream,
                group=group,
                limit=rng.randint(1, cfg.read_max),
                wait=cfg.receive_wait,
            )
            if outcome == "ok" and batch is not None and batch.records:
                reached = batch.next_offset
                # Never move the group back ourselves: a backward offset is then the broker's.
                if reached > acknowledged:
                    done, _ = proc.call(
                        "commit",
                        functools.partial(proc.client.commit_offset, cfg.stream, group, reached),
                        {"stream": cfg.stream, "group": group, "offset": reached},
                        lambda offset: {"offset": offset},
                    )
                    if done == "ok":
                        acknowledged = reached
            if rng.random() < GROUP_CHECK_PROBABILITY:
                group_offset(proc, cfg.stream, group)
    except Exception:
        log.exception("group consumer %s crashed", name)
    finally:
        proc.close()


def group_offset(proc: _Process, stream: str, group: str) -> Outcome:
    """One recorded ``GET .../groups/{group}``."""
    outcome, _ = proc.call(
        "group_offset",
        functools.partial(proc.client.group_offset, stream, group),
        {"stream": stream, "group": group},
        lambda offset: {"offset": offset},
    )
    return outcome


def _fan_consume(workload: Workload, name: str, k: int) -> None:
    cfg = workload.config
    rng = random.Random(f"{cfg.seed}-{name}")
    queue = cfg.fanout_queues[k]
    count = len(cfg.fanout_queues)
    proc = workload.process(name, k, count, cfg.client_timeout + cfg.receive_wait)
    try:
        while not workload.stopping.is_set():
            receive_and_ack(
                proc,
                queue,
                rng.randint(1, 5),
                cfg.receive_wait,
                cfg.visibility_timeout,
                ack=rng.random() >= cfg.skip_ack_probability,
            )
    except Exception:
        log.exception("fan-out consumer %s crashed", name)
    finally:
        proc.close()


def final_stream_read(
    urls: list[str], history: HistoryWriter, config: WorkloadConfig, deadline_s: float
) -> tuple[bool, int]:
    """Reads the whole stream from offset 0, then every group's committed offset; bounded.

    Each page is a recorded ``read`` of process ``drain-stream``; the checker
    assembles the final stream from them. Complete when a read from the end
    came back empty (the workload has stopped, so nothing is appended any more)
    and every group's offset was read. Writes a ``stream_final`` record.
    """
    patient = 3 * (config.client_timeout + config.receive_wait)
    proc = _Process(FINAL_READER, urls, history, max(config.client_timeout, 2.0), patient)
    end = history.now() + deadline_s
    position = 0
    reached_end = False
    groups_read: set[str] = set()
    groups = [group_name(k) for k in range(config.groups)]
    pause = threading.Event()  # never set: a pause between failed calls, not a wait for it
    try:
        while history.now() < end and not reached_end:
            outcome, batch = read(
                proc, config.stream, offset=position, limit=FINAL_READ_MAX, wait=0
            )
            if outcome == "ok" and batch is not None:
                reached_end = not batch.records
                position = max(position, batch.next_offset)
            else:
                pause.wait(RETRY_PAUSE_S)
        for group in groups:
            while history.now() < end and group not in groups_read:
                if group_offset(proc, config.stream, group) == "ok":
                    groups_read.add(group)
                else:
                    pause.wait(RETRY_PAUSE_S)
    finally:
        proc.close()
    complete = reached_end and groups_read == set(groups)
    history.write(
        {
            "type": "stream_final",
            "stream": config.stream,
            "complete": complete,
            "next_offset": position,
            "groups": sorted(groups_read),
        }
    )
    return complete, position
