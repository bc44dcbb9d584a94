"""Property test: Store against a plain in-memory model of the queue semantics.

The model keeps messages in dicts and recomputes everything by brute force (no
indexes, no counters), so agreement checks the LMDB indexes and counters as
well as the rules themselves. Each step also checks that replaying an applied
index is a no-op, and teardown checks that a copy and a twin replica fed the
same log hold the same digest.
"""

import tempfile
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from storage import Store, normalize_queue_config

QUEUES = ("a", "b", "c")
KNOWN_IDS = ("x", "y", "z")
WINDOW_MS = 200
MAP_SIZE = 32 << 20

Command = dict[str, Any]
Result = dict[str, Any]


@dataclass
class ModelMessage:
    id: str
    body: str
    headers: dict[str, Any]
    encoding: str | None
    published_at: int
    expires_at: int | None
    state: str
    due: int | None = None
    lease: str | None = None
    deadline: int | None = None
    deliveries: int = 0

    def timer(self) -> int | None:
        return self.due if self.state == "delayed" else self.deadline


@dataclass
class ModelQueue:
    config: dict[str, Any]
    messages: dict[int, ModelMessage] = field(default_factory=dict)
    next_seq: int = 1
    dedup: dict[str, int] = field(default_factory=dict)
    published_total: int = 0
    delivered_total: int = 0
    acked_total: int = 0
    dead_lettered_total: int = 0


class Model:
    """The queue rules of the storage contract, written the obvious way."""

    def __init__(self) -> None:
        self.queues: dict[str, ModelQueue] = {}
        self.last_now = 0
        self.now = 0

    def apply(self, cmd: Command) -> Result:
        self.now = max(cmd["now_ms"], self.last_now)
        self.last_now = self.now
        result: Result = getattr(self, "_" + cmd["op"])(cmd)
        return result

    # Commands

    def _declare_queue(self, cmd: Command) -> Result:
        config = normalize_queue_config(cmd["config"])
        existing = self.queues.get(cmd["queue"])
        if existing is None:
            self.queues[cmd["queue"]] = ModelQueue(config)
            return {"status": "created", "config": config}
        status = "exists" if existing.config == config else "conflict"
        return {"status": status, "config": existing.config}

    def _delete_queue(self, cmd: Command) -> Result:
        if self.queues.pop(cmd["queue"], None) is None:
            return {"status": "not_found"}
        return {"status": "deleted"}

    def _reap(self, cmd: Command) -> Result:
        """Removing what deleted and purged queues left changes nothing visible."""
        return {"status": "ok"}

    def _purge_queue(self, cmd: Command) -> Result:
        q = self.queues.get(cmd["queue"])
        if q is None:
            return {"status": "not_found"}
        purged = len(q.messages)
        q.messages.clear()
        return {"status": "purged", "purged": purged}

    def _publish(self, cmd: Command) -> Result:
        q = self.queues.get(cmd["queue"])
        if q is None:
            return {"status": "not_found"}
        window = cmd["dedup_window_ms"]
        fresh: list[dict[str, Any]] = []
        seen: set[str] = set()
        for message in cmd["messages"]:
            if window > 0:
                last = q.dedup.get(message["id"])
                if message["id"] in seen or (last is not None and last > self.now - window):
                    continue
                seen.add(message["id"])
            fresh.append(message)
        limit = q.config["max_length"]
        reject = q.config["overflow"] == "reject_publish"
        if limit is not None and reject and len(q.messages) + len(fresh) > limit:
            return {"status": "queue_full", "message": "ignored"}
        for message in fresh:
            self._enqueue(
                q,
                message["id"],
                message["body"],
                headers=message["headers"],
                encoding=message.get("encoding"),
                delay_ms=message.get("delay_ms"),
            )
            if window > 0:
                q.dedup[message["id"]] = self.now
        if not reject:
            self._trim(cmd["queue"], forward=True)
        return {"status": "ok", "ids": [m["id"] for m in cmd["messages"]]}

    def _receive(self, cmd: Command) -> Result:
        name = cmd["queue"]
        q = self.queues.get(name)
        if q is None:
            return {"status": "not_found"}
        for message in q.messages.values():
            timer = message.timer()
            if timer is not None and timer <= self.now:
                self._set_ready(message)
        max_deliveries = q.config["max_deliveries"]
        taken: list[Result] = []
        for seq in sorted(q.messages):
            if len(taken) >= cmd["max"]:
                break
            message = q.messages[seq]
            if message.state != "ready":
                continue
            if message.expires_at is not None and message.expires_at <= self.now:
                self._dead_letter(name, seq, "expired", forward=True)
            elif max_deliveries is not None and message.deliveries >= max_deliveries:
                self._dead_letter(name, seq, "max_deliveries", forward=True)
            else:
                message.deliveries += 1
                message.state = "leased"
                message.lease = cmd["lease_token"]
                message.deadline = self.now + cmd["lease_ms"]
                q.delivered_total += 1
                delivery = {
                    "id": message.id,
                    "body": message.body,
                    "headers": message.headers,
                    "receipt": f"{seq:x}.{cmd['lease_token']}",
                    "deliveries": message.deliveries,
                    "published_at": message.published_at,
                }
                if message.encoding is not None:
                    delivery["encoding"] = message.encoding
                taken.append(delivery)
        return {"status": "ok", "messages": taken}

    def _ack(self, cmd: Command) -> Result:
        q = self.queues.get(cmd["queue"])
        if q is None:
            return {"status": "not_found"}
        acked = 0
        stale = []
        for receipt in cmd["receipts"]:
            seq = self._holder(q, receipt)
            if seq is None:
                stale.append(receipt)
                continue
            del q.messages[seq]
            q.acked_total += 1
            acked += 1
        return {"status": "ok", "acked": acked, "stale": stale}

    def _nack(self, cmd: Command) -> Result:
        q = self.queues.get(cmd["queue"])
        if q is None:
            return {"status": "not_found"}
        requeued = 0
        stale = []
        for receipt in cmd["receipts"]:
            seq = self._holder(q, receipt)
            if seq is None:
                stale.append(receipt)
                continue
            message = q.messages[seq]
            self._set_ready(message)
            if cmd["delay_ms"] > 0:
                message.state = "delayed"
                message.due = self.now + cmd["delay_ms"]
            requeued += 1
        return {"status": "ok", "requeued": requeued, "stale": stale}

    # Rules shared by the commands

    def _holder(self, q: ModelQueue, receipt: str) -> int | None:
        """The seq whose live lease the receipt names, if any."""
        seq_text, dot, token = receipt.partition(".")
        try:
            seq = int(seq_text, 16)
        except ValueError:
            return None
        if not dot or f"{seq:x}" != seq_text:
            return None
        message = q.messages.get(seq)
        if message is None or message.state != "leased" or message.lease != token:
            return None
        assert message.deadline is not None
        return seq if message.deadline > self.now else None

    @staticmethod
    def _set_ready(message: ModelMessage) -> None:
        message.state = "ready"
        message.due = message.lease = message.deadline = None

    def _enqueue(
        self,
        q: ModelQueue,
        message_id: str,
        body: str,
        *,
        headers: dict[str, Any],
        encoding: str | None,
        delay_ms: int | None,
    ) -> None:
        delay = q.config["delivery_delay_ms"] if delay_ms is None else delay_ms
        ttl = q.config["message_ttl_ms"]
        q.messages[q.next_seq] = ModelMessage(
            id=message_id,
            body=body,
            headers=headers,
            encoding=encoding,
            published_at=self.now,
            expires_at=None if ttl is None else self.now + ttl,
            state="delayed" if delay > 0 else "ready",
            due=self.now + delay if delay > 0 else None,
        )
        q.next_seq += 1
        q.published_total += 1

    def _trim(self, name: str, *, forward: bool) -> None:
        q = self.queues[name]
        limit = q.config["max_length"]
        while limit is not None and len(q.messages) > limit:
            self._dead_letter(name, min(q.messages), "max_length", forward=forward)

    def _dead_letter(self, name: str, seq: int, reason: str, *, forward: bool) -> None:
        q = self.queues[name]
        message = q.messages.pop(seq)
        q.dead_lettered_total += 1
        target_name = q.config["dead_letter_queue"]
        target = self.queues.get(target_name) if target_name is not None else None
        if not forward or target is None or target_name == name:
            return
        assert target_name is not None
        limit = target.config["max_length"]
        reject = target.config["overflow"] == "reject_publish"
        if limit is not None and reject and len(target.messages) + 1 > limit:
            return
        headers = {
            **message.headers,
            "x-dead-letter-reason": reason,
            "x-dead-letter-source": name,
        }
        self._enqueue(
            target,
            message.id,
            message.body,
            headers=headers,
            encoding=message.encoding,
            delay_ms=None,
        )
        if not reject:
            self._trim(target_name, forward=False)

    # Read side

    def stats(self, name: str, now_ms: int) -> Result:
        now = max(now_ms, self.last_now)
        q = self.queues[name]
        ready = in_flight = delayed = 0
        for message in q.messages.values():
            timer = message.timer()
            if message.state == "ready" or (timer is not None and timer <= now):
                ready += 1
            elif message.state == "leased":
                in_flight += 1
            else:
                delayed += 1
        return {
            "name": name,
            "config": q.config,
            "ready": ready,
            "in_flight": in_flight,
            "delayed": delayed,
            "total": len(q.messages),
            "published_total": q.published_total,
            "delivered_total": q.delivered_total,
            "acked_total": q.acked_total,
            "dead_lettered_total": q.dead_lettered_total,
        }

    def has_deliverable(self, name: str, now_ms: int) -> bool:
        now = max(now_ms, self.last_now)
        q = self.queues.get(name)
        if q is None:
            return False
        due = self.next_due_ms(name)
        ready = any(m.state == "ready" for m in q.messages.values())
        return ready or (due is not None and due <= now)

    def next_due_ms(self, name: str) -> int | None:
        q = self.queues.get(name)
        timers = [m.timer() for m in q.messages.values()] if q is not None else []
        return min((t for t in timers if t is not None), default=None)


queue_names = st.sampled_from(QUEUES)
configs = st.fixed_dictionaries(
    {
        "max_length": st.one_of(st.none(), st.integers(0, 4)),
        "overflow": st.sampled_from(["reject_publish", "drop_head"]),
        "max_deliveries": st.one_of(st.none(), st.integers(1, 3)),
        "message_ttl_ms": st.sampled_from([None, None, 0, 50, 300]),
        "dead_letter_queue": st.sampled_from([None, *QUEUES, *QUEUES]),
        "delivery_delay_ms": st.sampled_from([0, 0, 40]),
    }
)
garbage_receipts = st.sampled_from(["", "zz", "1", "1.", "01.t1", "1.nobody", "g.t1"])


@settings(max_examples=100, stateful_step_count=40, deadline=None)
class StoreMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.store = Store(f"{self.dir.name}/main", map_size=MAP_SIZE)
        self.model = Model()
        self.clock = 1_000_000
        self.index = 0
        self.log: list[tuple[int, list[Command]]] = []
        self.receipts: list[tuple[str, str]] = []
        self.tokens = 0
        self.fresh_ids = 0

    def _apply(self, *commands: Command) -> None:
        stamped = [{**c, "now_ms": self.clock} for c in commands]
        self.index += 1
        results = self.store.apply(self.index, stamped)
        expected = [self.model.apply(c) for c in stamped]
        assert results is not None
        for command, got, want in zip(stamped, results, expected, strict=True):
            if want["status"] == "queue_full":
                assert got["status"] == "queue_full"
            elif command["op"] == "reap":
                assert got["status"] == "ok" and 0 <= got["removed"] <= command["max_keys"]
            else:
                assert got == want
            for delivery in got.get("messages", []):
                self.receipts.append((command["queue"], delivery["receipt"]))
        self.log.append((self.index, stamped))

    def _publish_command(self, data: st.DataObject) -> Command:
        messages = []
        for _ in range(data.draw(st.integers(0, 4))):
            if data.draw(st.booleans()):
                message_id = data.draw(st.sampled_from(KNOWN_IDS))
            else:
                self.fresh_ids += 1
                message_id = f"u{self.fresh_ids}"
            message: Command = {
                "id": message_id,
                "body": data.draw(st.sampled_from(["", "hello", "aGk="])),
                "headers": data.draw(st.sampled_from([{}, {"k": "v"}])),
                "delay_ms": data.draw(st.sampled_from([None, None, 0, 30])),
            }
            if data.draw(st.booleans()):
                message["encoding"] = "base64"
            messages.append(message)
        return {
            "op": "publish",
            "queue": data.draw(queue_names),
            "dedup_window_ms": WINDOW_MS,
            "messages": messages,
        }

    def _receive_command(self, data: st.DataObject) -> Command:
        self.tokens += 1
        return {
            "op": "receive",
            "queue": data.draw(queue_names),
            "max": data.draw(st.sampled_from([0, 1, 2, 3, 3])),
            "lease_ms": data.draw(st.sampled_from([20, 100, 1000])),
            "lease_token": f"t{self.tokens}",
        }

    def _settle_command(self, data: st.DataObject, op: str) -> Command:
        recent = st.sampled_from(self.receipts[-4:]) if self.receipts else st.nothing()
        known = st.one_of(recent, st.sampled_from(self.receipts)) if self.receipts else recent
        garbage = garbage_receipts.map(lambda r: ("", r))
        picked = data.draw(st.lists(st.one_of(known, garbage), max_size=4))
        queue = picked[0][0] if picked and picked[0][0] else data.draw(queue_names)
        command: Command = {"op": op, "queue": queue, "receipts": [r for _, r in picked]}
        if op == "nack":
            command["delay_ms"] = data.draw(st.sampled_from([0, 0, 30]))
        return command

    @initialize(config=st.lists(configs, min_size=len(QUEUES), max_size=len(QUEUES)))
    def declare_all(self, config: list[dict[str, Any]]) -> None:
        self._apply(
            *(
                {"op": "declare_queue", "queue": name, "config": c}
                for name, c in zip(QUEUES, config, strict=True)
            )
        )

    @rule(name=queue_names, config=configs)
    def declare(self, name: str, config: dict[str, Any]) -> None:
        self._apply({"op": "declare_queue", "queue": name, "config": config})

    @rule(name=queue_names, op=st.sampled_from(["delete_queue", "purge_queue", "purge_queue"]))
    def delete_or_purge(self, name: str, op: str) -> None:
        self._apply({"op": op, "queue": name})

    @rule(max_keys=st.integers(1, 20))
    def reap(self, max_keys: int) -> None:
        self._apply({"op": "reap", "max_keys": max_keys})

    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        self._apply(self._publish_command(data))

    @rule(data=st.data())
    def receive(self, data: st.DataObject) -> None:
        self._apply(self._receive_command(data))

    @rule(data=st.data(), op=st.sampled_from(["ack", "nack"]))
    def settle(self, data: st.DataObject, op: str) -> None:
        self._apply(self._settle_command(data, op))

    @rule(data=st.data(), op=st.sampled_from(["ack", "nack"]))
    def receive_then_settle(self, data: st.DataObject, op: str) -> None:
        """Settle fresh receipts, which mostly still hold their lease."""
        before = len(self.receipts)
        command = self._receive_command(data)
        self._apply(command)
        fresh = [receipt for _, receipt in self.receipts[before:]]
        if fresh:
            chosen = data.draw(st.lists(st.sampled_from(fresh), min_size=1, max_size=4))
            settle: Command = {"op": op, "queue": command["queue"], "receipts": chosen}
            if op == "nack":
                settle["delay_ms"] = data.draw(st.sampled_from([0, 30]))
            self._apply(settle)

    @rule(data=st.data())
    def batch(self, data: st.DataObject) -> None:
        """Several commands in one Raft entry, as group commit produces."""
        commands = []
        for _ in range(data.draw(st.integers(2, 4))):
            kind = data.draw(st.sampled_from(["publish", "receive", "ack", "nack"]))
            if kind == "publish":
                commands.append(self._publish_command(data))
            elif kind == "receive":
                commands.append(self._receive_command(data))
            else:
                commands.append(self._settle_command(data, kind))
        self._apply(*commands)

    @rule(delta=st.sampled_from([0, 10, 20, 40, 100, WINDOW_MS, 250, -60, -200]))
    def tick(self, delta: int) -> None:
        """Time passes; a negative step is a new leader whose clock is behind."""
        self.clock += delta

    @precondition(lambda self: self.index > 0)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        index, commands = self.log[data.draw(st.integers(0, len(self.log) - 1))]
        digest = self.store.digest()
        assert self.store.apply(index, commands) is None
        assert self.store.digest() == digest

    @invariant()
    def visible_state_matches(self) -> None:
        expected = [self.model.stats(name, self.clock) for name in sorted(self.model.queues)]
        assert self.store.list_queues(self.clock) == expected
        for name in QUEUES:
            known = name in self.model.queues
            want = self.model.stats(name, self.clock) if known else None
            assert self.store.get_queue(name, self.clock) == want
            assert self.store.has_deliverable(name, self.clock) == self.model.has_deliverable(
                name, self.clock
            )
            assert self.store.next_due_ms(name) == self.model.next_due_ms(name)
        assert self.store.applied_index() == self.index

    def teardown(self) -> None:
        try:
            digest = self.store.digest()
            self.store.copy_to(f"{self.dir.name}/copy")
            with Store(f"{self.dir.name}/copy", map_size=MAP_SIZE) as copy:
                assert copy.digest() == digest
            with Store(f"{self.dir.name}/twin", map_size=MAP_SIZE) as twin:
                for index, commands in self.log:
                    twin.apply(index, commands)
                assert twin.digest() == digest
        finally:
            self.store.close()
            self.dir.cleanup()


TestStoreMatchesModel = StoreMatchesModel.TestCase
