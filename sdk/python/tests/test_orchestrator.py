"""Orchestrators (PROTOCOL.md section 7) end to end: a worker process stepped with section 7 envelopes by a
toy engine that keeps each instance's history as the host would. No host needed."""

import json
import time
import unittest
import uuid
from datetime import datetime, timedelta, timezone

import nimbus

from .test_worker import Worker

ENTRY = '''
import collections
from datetime import timedelta

import nimbus

app = nimbus.App()

STARTS = collections.Counter()  # generator starts per instance: one per replay
LIVE = collections.Counter()  # activity results the code saw live (not replaying), per instance


@app.http("/counts")
def counts(req, ctx):
    return {"starts": STARTS, "live": LIVE}


@app.activity
def hello(data, ctx):
    return "Hello " + data


@app.orchestrator
def chain(ctx):
    STARTS[ctx.instance_id] += 1
    out = []
    for city in ctx.get_input():
        out.append((yield ctx.call_activity("hello", city)))
        if not ctx.is_replaying:
            LIVE[ctx.instance_id] += 1
    return out


@app.orchestrator
def swallow(ctx):
    try:
        yield ctx.call_activity("hello", ctx.get_input())
    except:  # noqa: E722 -- user code that catches everything, the nondeterminism error included
        return "swallowed"
    return "done"


@app.orchestrator("fan")
def fan_out_fan_in(ctx):
    work = yield ctx.call_activity("list")
    results = yield ctx.task_all([ctx.call_activity("work", item) for item in work])
    nothing = yield ctx.task_all([])
    return {"results": results, "sum": sum(results), "nothing": nothing}


@app.orchestrator
def race(ctx):
    a = ctx.call_activity("a")
    b = ctx.call_activity("b")
    winner = yield ctx.task_any([a, b])
    try:
        result = winner.result
    except nimbus.TaskFailedError as exc:
        result = "failed: " + exc.code
    out = {"winner": "a" if winner is a else "b", "result": result}
    if ctx.get_input() == "again":
        yield ctx.call_activity("c")  # meanwhile the other one completes too
        out["again"] = (yield ctx.task_any([a, b])) is winner  # both done: the first in history still wins
    return out


@app.orchestrator
def deadline(ctx):
    timer = ctx.create_timer(ctx.current_utc_datetime + timedelta(minutes=5))
    yield ctx.call_activity("work")
    cancel = ctx.wait_for_external_event("cancel")  # maybe raised during the work: then already there
    winner = yield ctx.task_any([timer, cancel])
    return "cancelled" if winner is cancel else "deadline"


@app.orchestrator
def gather(ctx):
    tasks = [ctx.call_activity("work", i) for i in range(3)]
    yield ctx.call_activity("meanwhile")
    try:
        return (yield ctx.task_all(tasks))
    except nimbus.TaskFailedError as exc:
        return exc.code


@app.orchestrator
def approval(ctx):
    timer = ctx.create_timer(ctx.current_utc_datetime + timedelta(hours=1))
    event = ctx.wait_for_external_event("approve")
    winner = yield ctx.task_any([event, timer])
    if winner is event:
        return {"approved": event.result}
    return "timed out at " + ctx.current_utc_datetime.isoformat()


@app.orchestrator
def events(ctx):
    yield ctx.call_activity("prepare")
    first = ctx.wait_for_external_event("x")
    second = ctx.wait_for_external_event("x")
    other = ctx.wait_for_external_event("y")
    both = yield ctx.task_all([second, first])
    return {"both": both, "y": (yield other)}


@app.orchestrator
def parent(ctx):
    a = ctx.call_sub_orchestrator("child", {"n": 1})
    b = ctx.call_sub_orchestrator("child", {"n": 2}, instance_id="child-2")
    try:
        return (yield ctx.task_all([a, b]))
    except nimbus.TaskFailedError as exc:
        return {"failed": [exc.name, exc.code, exc.message]}


@app.orchestrator
def careful(ctx):
    retry = nimbus.RetryPolicy(3, timedelta(seconds=5), backoff=1.5, max_interval=60)
    try:
        yield ctx.call_activity("charge", 10, retry=retry)
    except nimbus.TaskFailedError as exc:
        ctx.set_custom_status({"refunding": exc.code})
        yield ctx.call_activity("refund", {"error": [exc.name, exc.code, exc.message, str(exc)]},
                                retry=nimbus.RetryPolicy(2, 0.25))
        return "refunded"
    return "charged"


@app.orchestrator
def careless(ctx):
    yield ctx.call_activity("charge", 10)
    return "charged"


@app.orchestrator
def broken(ctx):
    ctx.set_custom_status("about to fail")
    yield ctx.call_activity("a")
    raise ValueError("boom")


@app.orchestrator
def counter(ctx):
    n = ctx.get_input()
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=n))
    if n >= 3:
        return n
    ctx.continue_as_new(n + 1)


@app.orchestrator
def clock(ctx):
    def note():
        seen.append([ctx.is_replaying, ctx.current_utc_datetime.isoformat(), ctx.new_uuid()])

    seen = []
    note()
    yield ctx.call_activity("a")
    note()
    yield ctx.wait_for_external_event("go")
    note()
    return seen


@app.orchestrator
def plain(ctx):
    return {"input": ctx.get_input(), "instance": ctx.instance_id, "version": ctx.version,
            "replaying": ctx.is_replaying}


@app.orchestrator
def junk(ctx):
    try:
        yield 42
    except TypeError as exc:
        caught = str(exc)
    try:
        ctx.call_activity("a", {1, 2})
    except TypeError as exc:
        not_json = str(exc)
    task = ctx.call_activity("a")  # id 0: the refused call took no id
    if ctx.get_input() == "uncaught":
        yield "not a task"
    return {"caught": caught, "not_json": not_json, "id0": (yield task)}


@app.orchestrator
def loop(ctx):
    total = 0
    for i in range(ctx.get_input()):
        total += yield ctx.call_activity("inc", i)
    return total
'''

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
INVOKE = "/_nimbus/worker/invoke/"


def rfc3339(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + ".000000123Z"  # nanoseconds, as a Rust host may write


def step(worker, name, data, conn=None):
    """One step envelope to `worker`: the answer's status and JSON body."""
    envelope = {"id": "inv-1", "trigger": {"type": "orchestrator"}, "data": data}
    headers = {"content-type": "application/json", "x-nimbus-function": name}
    response, body = worker.request("POST", INVOKE + name, json.dumps(envelope).encode(), headers, conn)
    answer = json.loads(body)
    if response.status == 200 and "actions" in answer:
        assert answer.pop("worker") == "test-1", answer  # the instance that ran it, for the host's timeline
    return response.status, answer


class Engine:
    """A toy durable engine for one instance: its history, and steps sent as PROTOCOL.md section 7.1 says.

    After each step it writes the scheduling events of the answered actions. With `counts_scheduled` (the
    default) the next step's past_length counts them, so `new` holds only what happened since; without it,
    they come back at the start of the next step's `new`."""

    def __init__(self, worker, name, input=None, instance="i-1", version="2", counts_scheduled=True, conn=None):
        self.worker = worker
        self.name = name
        self.instance = instance
        self.version = version
        self.counts_scheduled = counts_scheduled
        self.conn = conn
        self.history = []
        self.cursor = 0  # what the host believes the worker holds
        self.clock = T0
        self.need_history = 0
        self.answers = []
        self.event("started", name=name, version=version, input=input)

    def event(self, type, **fields):
        event = {"type": type, "at": rfc3339(self.clock)}
        event.update(fields)
        self.history.append(event)
        self.clock += timedelta(seconds=1)
        return event

    def data(self, with_past=False):
        return {"instance": self.instance, "name": self.name, "version": self.version,
                "past_length": self.cursor, "past": self.history[: self.cursor] if with_past else None,
                "new": self.history[self.cursor :]}

    def step(self, with_past=False, worker=None):
        worker = worker or self.worker
        status, answer = step(worker, self.name, self.data(with_past), self.conn)
        assert status == 200, answer
        if answer == {"need_history": True}:
            self.need_history += 1
            status, answer = step(worker, self.name, self.data(True), self.conn)
            assert status == 200, answer
        self.cursor = len(self.history)
        for action in answer["actions"]:
            kind = action["type"]
            if kind == "call_activity":
                self.event("task_scheduled", id=action["id"], name=action["name"], input=action["input"])
            elif kind == "create_timer":
                self.event("timer_created", id=action["id"], fire_at=action["fire_at"])
            else:
                self.event("sub_scheduled", id=action["id"], name=action["name"], input=action["input"],
                           instance=action.get("instance", "sub-%d" % action["id"]))
        if self.counts_scheduled:
            self.cursor = len(self.history)
        self.answers.append(answer)
        return answer

    def complete(self, id, result):
        self.event("task_completed", id=id, result=result)

    def fail(self, id, code, message):
        self.event("task_failed", id=id, error={"code": code, "message": message})

    def fire(self, id):
        created = next(e for e in self.history if e["type"] == "timer_created" and e["id"] == id)
        self.event("timer_fired", id=id, fire_at=created["fire_at"])

    def raise_event(self, name, data):
        self.event("event_raised", name=name, data=data)


class OrchestratorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.worker = Worker(ENTRY)

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop_cleanly()

    def engine(self, name, input=None, **kwargs):
        kwargs.setdefault("instance", "%s-%s" % (self.id().rsplit(".", 1)[-1], name))
        return Engine(self.worker, name, input, **kwargs)

    def counts(self, worker=None):
        response, data = (worker or self.worker).request("GET", "/counts")
        return json.loads(data)

    def assert_running(self, answer, actions):
        self.assertEqual(answer, {"actions": actions, "state": "running"})

    # --- the index and the declarations ---

    def test_index_lists_orchestrators(self):
        response, data = self.worker.request("GET", "/_nimbus/worker/index")
        functions = {f["name"]: f["trigger"] for f in json.loads(data)["functions"]}
        self.assertEqual(functions["chain"], {"type": "orchestrator"})
        self.assertEqual(functions["fan"], {"type": "orchestrator"})
        self.assertEqual(functions["hello"], {"type": "activity"})

    # --- patterns ---

    def test_chaining(self):
        e = self.engine("chain", ["Tokyo", "Seattle", "London"])
        self.assert_running(e.step(), [{"type": "call_activity", "id": 0, "name": "hello", "input": "Tokyo"}])
        e.complete(0, "Hello Tokyo")
        self.assert_running(e.step(), [{"type": "call_activity", "id": 1, "name": "hello", "input": "Seattle"}])
        e.complete(1, "Hello Seattle")
        self.assert_running(e.step(), [{"type": "call_activity", "id": 2, "name": "hello", "input": "London"}])
        e.complete(2, "Hello London")
        self.assertEqual(e.step(), {"actions": [], "state": "completed",
                                    "output": ["Hello Tokyo", "Hello Seattle", "Hello London"]})
        self.assertEqual(e.need_history, 0)
        counts = self.counts()
        self.assertEqual((counts["starts"][e.instance], counts["live"][e.instance]), (1, 3))

    def test_fan_out_fan_in(self):
        e = self.engine("fan")
        self.assert_running(e.step(), [{"type": "call_activity", "id": 0, "name": "list", "input": None}])
        e.complete(0, ["a", "b", "c", "d"])
        answer = e.step()
        self.assertEqual([(a["id"], a["name"], a["input"]) for a in answer["actions"]],
                         [(1, "work", "a"), (2, "work", "b"), (3, "work", "c"), (4, "work", "d")])
        e.complete(3, 30)
        e.complete(1, 10)
        self.assert_running(e.step(), [])
        e.complete(4, 40)
        e.complete(2, 20)
        self.assertEqual(e.step()["output"], {"results": [10, 20, 30, 40], "sum": 100, "nothing": []})

    def test_fan_in_fails_with_the_first_failure(self):
        e = self.engine("fan")
        e.step()
        e.complete(0, ["a", "b", "c"])
        e.step()
        e.fail(3, "first", "c failed")
        e.fail(2, "second", "b failed")  # later in history: not the one raised, though b comes before c
        answer = e.step()
        self.assertEqual(answer["state"], "failed")
        self.assertEqual(answer["error"], {"code": "orchestrator_error",
                                           "message": "TaskFailedError: activity 'work' failed: first: c failed"})

    def test_task_any_first_in_history_order(self):
        e = self.engine("race")
        answer = e.step()
        self.assertEqual([a["name"] for a in answer["actions"]], ["a", "b"])
        e.complete(1, "b first")
        e.complete(0, "a second")  # in the same step, after
        self.assertEqual(e.step()["output"], {"winner": "b", "result": "b first"})
        e = self.engine("race", instance="race-2")
        e.step()
        e.fail(0, "nope", "a failed")
        self.assertEqual(e.step()["output"], {"winner": "a", "result": "failed: nope"})
        e = self.engine("race", "again", instance="race-3")
        e.step()
        e.complete(1, "b first")
        self.assertEqual(e.step()["actions"][0]["name"], "c")
        e.complete(0, "a second")
        e.complete(2, None)
        self.assertEqual(e.step()["output"], {"winner": "b", "result": "b first", "again": True})

    def test_settled_before_asked_still_in_history_order(self):
        for first, second, expected in [("raise", "fire", "cancelled"), ("fire", "raise", "deadline")]:
            e = self.engine("deadline", instance="deadline-" + first)
            e.step()
            for what in (first, second):
                e.raise_event("cancel", None) if what == "raise" else e.fire(0)
            e.complete(1, None)
            self.assertEqual(e.step()["output"], expected)
        e = self.engine("gather")
        self.assertEqual(len(e.step()["actions"]), 4)
        e.fail(2, "two", "failed first")
        e.fail(1, "one", "failed later")
        e.complete(0, None)
        e.complete(3, None)
        self.assertEqual(e.step()["output"], "two")

    def test_timers(self):
        e = self.engine("approval")
        answer = e.step()  # waiting for an event is not an action
        self.assert_running(answer, [{"type": "create_timer", "id": 0, "fire_at": "2024-05-01T13:00:00Z"}])
        e.fire(0)
        fired_at = e.history[-1]["at"]
        self.assertEqual(e.step(), {"actions": [], "state": "completed",
                                    "output": "timed out at %s" % fired_at.replace(".000000123Z", "+00:00")})

    def test_external_event_beats_timer(self):
        e = self.engine("approval")
        e.step()
        e.raise_event("other", 1)
        e.raise_event("approve", {"by": "ana"})
        e.fire(0)
        self.assertEqual(e.step()["output"], {"approved": {"by": "ana"}})

    def test_two_waits_for_one_name_take_successive_events(self):
        e = self.engine("events")
        e.step()
        e.raise_event("x", "first")  # before the code waits: kept for the first wait
        self.assert_running(e.step(), [])
        e.complete(0, None)
        e.raise_event("y", "why")
        self.assert_running(e.step(), [])
        e.raise_event("x", "second")
        e.raise_event("x", "third")  # nobody waits for it
        self.assertEqual(e.step()["output"], {"both": ["second", "first"], "y": "why"})

    def test_sub_orchestrators(self):
        e = self.engine("parent")
        self.assert_running(e.step(), [
            {"type": "call_sub_orchestrator", "id": 0, "name": "child", "input": {"n": 1}},
            {"type": "call_sub_orchestrator", "id": 1, "name": "child", "input": {"n": 2}, "instance": "child-2"},
        ])
        e.event("sub_completed", id=1, result="two")
        e.event("sub_completed", id=0, result="one")
        self.assertEqual(e.step()["output"], ["one", "two"])
        e = self.engine("parent", instance="parent-2")
        e.step()
        e.event("sub_failed", id=1, error={"code": "orchestrator_error", "message": "ValueError: bad"})
        self.assertEqual(e.step()["output"], {"failed": ["child", "orchestrator_error", "ValueError: bad"]})

    # --- failures, retries, status ---

    def test_retry_and_a_caught_task_failure(self):
        e = self.engine("careful")
        self.assert_running(e.step(), [{
            "type": "call_activity", "id": 0, "name": "charge", "input": 10,
            "retry": {"attempts": 3, "first_interval_ms": 5000, "backoff": 1.5, "max_interval_ms": 60000},
        }])
        e.fail(0, "card_declined", "no funds")
        answer = e.step()
        self.assertEqual(answer, {"actions": [{
            "type": "call_activity", "id": 1, "name": "refund",
            "input": {"error": ["charge", "card_declined", "no funds",
                                "activity 'charge' failed: card_declined: no funds"]},
            "retry": {"attempts": 2, "first_interval_ms": 250, "backoff": 2.0},
        }], "state": "running", "custom_status": {"refunding": "card_declined"}})
        e.complete(1, None)
        self.assertEqual(e.step(), {"actions": [], "state": "completed", "output": "refunded",
                                    "custom_status": {"refunding": "card_declined"}})

    def test_uncaught_task_failure_fails_the_orchestration(self):
        e = self.engine("careless")
        e.step()
        e.fail(0, "card_declined", "no funds")
        message = "TaskFailedError: activity 'charge' failed: card_declined: no funds"
        self.assertEqual(e.step(), {"actions": [], "state": "failed",
                                    "error": {"code": "orchestrator_error", "message": message}})

    def test_an_exception_fails_the_orchestration(self):
        e = self.engine("broken")
        self.assertEqual(e.step()["custom_status"], "about to fail")
        e.complete(0, None)
        self.assertEqual(e.step(), {"actions": [], "state": "failed", "custom_status": "about to fail",
                                    "error": {"code": "orchestrator_error", "message": "ValueError: boom"}})
        log = self.worker.log()
        self.assertIn("orchestration %s failed" % e.instance, log)
        self.assertIn("Traceback", log)
        self.assertIn('raise ValueError("boom")', log)
        # the instance was dropped: the next step for it needs the history
        e.raise_event("late", None)
        self.assertEqual(step(self.worker, "broken", e.data())[1], {"need_history": True})

    def test_continue_as_new(self):
        e = self.engine("counter", 2)
        self.assert_running(e.step(), [{"type": "create_timer", "id": 0, "fire_at": "2024-05-01T12:00:02Z"}])
        e.fire(0)
        self.assertEqual(e.step(), {"actions": [], "state": "continued_as_new", "input": 3})
        # the next generation: the same instance id, a fresh history that starts with `started`
        e.history, e.cursor = [], 0
        e.event("started", name="counter", version="2", input=3)
        answer = e.step()
        self.assertEqual([(a["type"], a["id"]) for a in answer["actions"]], [("create_timer", 0)])
        e.fire(0)
        self.assertEqual(e.step(), {"actions": [], "state": "completed", "output": 3})
        self.assertEqual(e.need_history, 0)

    # --- sessions: kept, replayed, evicted ---

    def test_session_reuse_applies_only_new_events(self):
        e = self.engine("chain", ["a", "b", "c"])
        e.step()
        e.complete(0, "A")
        e.step()
        e.complete(1, "B")
        e.step()
        counts = self.counts()
        self.assertEqual(counts["starts"][e.instance], 1)  # never replayed
        self.assertEqual(counts["live"][e.instance], 2)

    def test_sessions_tell_generations_apart(self):
        e = self.engine("chain", ["a", "b", "c"], instance="gen")
        e.step()
        e.complete(0, "A")
        e.step(with_past=True)  # held at past_length: `past` is not replayed
        self.assertEqual(self.counts()["starts"]["gen"], 1)
        # the same instance id, another generation with as many events: its `started` differs
        e.complete(1, "B")
        past = [dict(e.history[0], at="2030-01-01T00:00:00Z")] + e.history[1 : e.cursor]
        data = dict(e.data(), past=past)
        self.assertEqual(step(self.worker, "chain", data)[1]["actions"][0]["id"], 2)
        self.assertEqual(self.counts()["starts"]["gen"], 2)  # replayed
        # a host that names executions: another one is another instance
        e = self.engine("chain", ["a", "b"], instance="exec")
        data = dict(e.data(), execution="e1")
        self.assertEqual(step(self.worker, "chain", data)[1]["actions"][0]["id"], 0)
        data = dict(data, past_length=2, new=[], execution="e2")
        self.assertEqual(step(self.worker, "chain", data)[1], {"need_history": True})

    def test_a_rewound_history_asks_again_for_what_it_voided(self):
        # A rewind (PROTOCOL.md section 7.2) replaces a failure and its activity's scheduling event by
        # `rewound` markers: the replay asks for that activity again, under the same id, and skips the
        # markers; what completed is not asked for again.
        e = self.engine("chain", ["a", "b", "c"], instance="rewound")
        e.step()
        e.complete(0, "A")
        e.step()
        e.fail(1, "handler_error", "ConnectionError: down")
        self.assertEqual(e.step()["state"], "failed")
        for seq, event in enumerate(e.history):
            if event.get("id") == 1 and event["type"] in ("task_scheduled", "task_failed"):
                e.history[seq] = {"type": "rewound", "at": event["at"], "was": event}
        e.event("rewound", reason="fixed")
        data = dict(e.data(True), execution="after-rewind")
        status, answer = step(self.worker, "chain", data)
        self.assertEqual(status, 200, answer)
        self.assert_running(answer, [{"type": "call_activity", "id": 1, "name": "hello", "input": "b"}])

    def test_scheduling_events_may_come_back_in_new(self):
        e = self.engine("chain", ["a", "b"], counts_scheduled=False)
        e.step()
        e.complete(0, "A")
        self.assertEqual(e.data()["new"][0]["type"], "task_scheduled")
        self.assert_running(e.step(), [{"type": "call_activity", "id": 1, "name": "hello", "input": "b"}])
        e.complete(1, "B")
        self.assertEqual(e.step()["output"], ["A", "B"])
        self.assertEqual((e.need_history, self.counts()["starts"][e.instance]), (0, 1))

    def test_need_history_round_trip(self):
        e = self.engine("chain", ["a", "b", "c"])
        e.step()
        e.complete(0, "A")
        e.step()
        e.complete(1, "B")
        other = Worker(ENTRY)  # another instance of the worker: it holds nothing
        try:
            status, answer = step(other, "chain", e.data())
            self.assertEqual((status, answer), (200, {"need_history": True}))
            answer = e.step(worker=other)
            self.assertEqual(e.need_history, 1)
            # only the new action: 0 and 1 are in history
            self.assert_running(answer, [{"type": "call_activity", "id": 2, "name": "hello", "input": "c"}])
            counts = self.counts(other)
            # replayed once; while replaying the code saw A live nowhere, then B live
            self.assertEqual((counts["starts"][e.instance], counts["live"][e.instance]), (1, 1))
            e.complete(2, "C")
            self.assertEqual(e.step(worker=other)["output"], ["A", "B", "C"])
            self.assertEqual(e.need_history, 1)  # held since
        finally:
            other.stop_cleanly()
        # the first worker's session is now behind the history: it asks for it rather than guess
        self.assertEqual(step(self.worker, "chain", e.data())[1], {"need_history": True})

    def test_eviction_then_need_history(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        engines = [self.engine("chain", ["x"], instance="evict-%d" % i, conn=conn) for i in range(1001)]
        started = time.monotonic()
        for e in engines:
            e.step()
        print("\n1001 orchestrations started in %.2f s" % (time.monotonic() - started))
        for e in (engines[0], engines[1000], engines[1]):
            e.complete(0, "X")
        # the first was evicted (1,000 are kept); the newest and the next oldest were not
        self.assertEqual(step(self.worker, "chain", engines[0].data(), conn)[1], {"need_history": True})
        self.assertEqual(engines[1000].step()["output"], ["X"])
        self.assertEqual(engines[1].step()["output"], ["X"])
        self.assertEqual(engines[0].step()["output"], ["X"])
        self.assertEqual([e.need_history for e in engines[:2]], [1, 0])

    # --- determinism ---

    def test_nondeterminism(self):
        def history(*scheduled):
            events = [{"type": "started", "at": "2024-05-01T12:00:00Z", "input": ["a"]}]
            events.extend(scheduled)
            return events

        cases = [
            (history({"type": "task_scheduled", "at": "2024-05-01T12:00:01Z", "id": 0, "name": "other"}),
             "step 0: history has task_scheduled other, the code now asks for call_activity hello"),
            (history({"type": "timer_created", "at": "2024-05-01T12:00:01Z", "id": 0,
                      "fire_at": "2024-05-02T00:00:00Z"}),
             "step 0: history has timer_created 2024-05-02T00:00:00Z, the code now asks for call_activity hello"),
            (history({"type": "task_scheduled", "at": "2024-05-01T12:00:01Z", "id": 0, "name": "hello"},
                     {"type": "task_completed", "at": "2024-05-01T12:00:02Z", "id": 0, "result": "A"},
                     {"type": "task_scheduled", "at": "2024-05-01T12:00:03Z", "id": 1, "name": "hello"}),
             "step 1: history has task_scheduled hello, the code now asks for nothing"),
        ]
        for i, (past, message) in enumerate(cases):
            data = {"instance": "nd-%d" % i, "name": "chain", "past_length": len(past), "past": past,
                    "new": [{"type": "event_raised", "at": "2024-05-01T12:00:09Z", "name": "poke", "data": None}]}
            status, answer = step(self.worker, "chain", data)
            self.assertEqual(answer, {"actions": [], "state": "failed",
                                      "error": {"code": "nondeterminism", "message": message}}, message)
            data["past"] = None  # dropped, not kept
            self.assertEqual(step(self.worker, "chain", data)[1], {"need_history": True})

    def test_nondeterminism_survives_code_that_catches_everything(self):
        # The live run asked "hello" with a JSON input; history says "other"; the code's bare except
        # must not turn the mismatch into a completion. A replay whose input is not JSON fails as
        # the live run did, before history is consulted.
        past = [{"type": "started", "at": "2024-05-01T12:00:00Z", "input": "x"},
                {"type": "task_scheduled", "at": "2024-05-01T12:00:01Z", "id": 0, "name": "other"}]
        data = {"instance": "sw-1", "name": "swallow", "past_length": 2, "past": past,
                "new": [{"type": "event_raised", "at": "2024-05-01T12:00:09Z", "name": "poke", "data": None}]}
        answer = step(self.worker, "swallow", data)[1]
        self.assertEqual(answer["state"], "failed", answer)
        self.assertEqual(answer["error"]["code"], "nondeterminism", answer)

    def test_replay_flags_times_and_uuids(self):
        e = self.engine("clock", instance="clock-1")
        e.step()
        e.complete(0, None)
        e.step()
        e.raise_event("go", None)
        live = e.step()["output"]
        ats = [datetime.strptime(e.history[i]["at"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
               for i in (0, 2, 3)]  # started, task_completed, event_raised (nanoseconds cut to microseconds)
        self.assertEqual([n[:2] for n in live], [[False, at.isoformat()] for at in ats])
        self.assertEqual([n[2] for n in live], [
            str(uuid.uuid5(uuid.NAMESPACE_URL, "clock-1_%s_%d" % (at.strftime("%Y-%m-%dT%H:%M:%SZ"), i)))
            for i, at in enumerate(ats)
        ])
        self.assertEqual(len(set(n[2] for n in live)), 3)
        # the same history replayed from scratch: the same times and uuids, is_replaying while in `past`
        e.cursor = len(e.history) - 1
        replayed = e.step(with_past=True)["output"]
        self.assertEqual([n[0] for n in replayed], [True, True, False])
        self.assertEqual([n[1:] for n in replayed], [n[1:] for n in live])

    def test_ten_thousand_events_replay_quickly(self):
        events = [{"type": "started", "at": "2024-05-01T12:00:00Z", "input": 10 ** 6}]
        for i in range(5000):
            at = "2024-05-01T12:%02d:%02d.123456789Z" % (i // 60 % 60, i % 60)
            events.append({"type": "task_scheduled", "at": at, "id": i, "name": "inc", "input": i})
            events.append({"type": "task_completed", "at": at, "id": i, "result": i})
        past, new = events[:-1], events[-1:]
        data = {"instance": "long", "name": "loop", "past_length": len(past), "past": past, "new": new}
        conn = self.worker.http()
        self.addCleanup(conn.close)
        started = time.monotonic()
        status, answer = step(self.worker, "loop", data, conn)
        elapsed = time.monotonic() - started
        print("\nreplayed %d events in %.3f s" % (len(events), elapsed))
        self.assertEqual(status, 200)
        self.assert_running(answer, [{"type": "call_activity", "id": 5000, "name": "inc", "input": 5000}])
        self.assertLess(elapsed, 2.0)
        # and then held: the next step applies one event
        data = {"instance": "long", "name": "loop", "past_length": len(events) + 1, "past": None,
                "new": [{"type": "task_completed", "at": "2024-05-01T13:00:00Z", "id": 5000, "result": 1}]}
        self.assertEqual(step(self.worker, "loop", data, conn)[1]["actions"][0]["id"], 5001)

    # --- odd code, odd steps ---

    def test_plain_function_completes_at_once(self):
        e = self.engine("plain", {"k": [1]}, instance="plain-1")
        self.assertEqual(e.step(), {"actions": [], "state": "completed", "output": {
            "input": {"k": [1]}, "instance": "plain-1", "version": "2", "replaying": False}})

    def test_yielding_what_is_not_a_task(self):
        e = self.engine("junk")
        answer = e.step()
        self.assertEqual(answer["actions"], [{"type": "call_activity", "id": 0, "name": "a", "input": None}])
        e.complete(0, "zero")
        output = e.step()["output"]
        self.assertIn("an orchestrator yields tasks made by its ctx", output["caught"])
        self.assertIn("not 42", output["caught"])
        self.assertIn("ctx.call_activity('a'): the input is not JSON", output["not_json"])
        self.assertEqual(output["id0"], "zero")
        e = self.engine("junk", "uncaught", instance="junk-2")
        answer = e.step()
        self.assertEqual(answer["state"], "failed")
        error = answer["error"]
        self.assertEqual(error["code"], "orchestrator_error")
        self.assertTrue(error["message"].startswith("TypeError: an orchestrator yields tasks"), error)

    def test_steps_that_are_not_steps(self):
        cases = [
            ("not an object", "data is an object"),
            ({"past_length": 0, "new": []}, "instance must be a non-empty string"),
            ({"instance": "x", "past_length": -1, "new": []}, "past_length must be an integer"),
            ({"instance": "x", "past_length": 2, "past": [], "new": []}, "past has 0 events but past_length says 2"),
            ({"instance": "x", "past_length": 0, "new": [3]}, "an orchestration event is an object"),
            ({"instance": "x", "past_length": 0, "new": [{"type": "task_completed", "id": "0"}]}, "integer id"),
        ]
        for data, message in cases:
            status, answer = step(self.worker, "chain", data)
            self.assertEqual(status, 400, data)
            self.assertEqual(answer["error"]["code"], "invalid_envelope")
            self.assertIn(message, answer["error"]["message"])


class DeclarationTest(unittest.TestCase):
    def test_decorator_forms(self):
        app = nimbus.App()

        @app.orchestrator
        def bare(ctx):
            yield ctx.call_activity("a")

        @app.orchestrator("named")
        def first(ctx):
            return 1

        @app.orchestrator(name="keyword")
        def second(ctx):
            return 2

        @app.orchestrator()
        def empty(ctx):
            return 3

        self.assertEqual(bare.__name__, "bare")
        self.assertEqual(app.index()["functions"], [{"name": n, "trigger": {"type": "orchestrator"}}
                                                    for n in ("bare", "named", "keyword", "empty")])

    def test_async_orchestrators_are_refused(self):
        app = nimbus.App()

        async def coroutine(ctx):
            return 1

        async def agen(ctx):
            yield 1

        for handler in (coroutine, agen):
            with self.assertRaises(TypeError) as caught:
                app.orchestrator(handler)
            self.assertIn("async function", str(caught.exception))
            self.assertIn("deterministic and synchronous", str(caught.exception))
            with self.assertRaises(TypeError) as caught:
                app.orchestrator("x")(handler)
            self.assertIn("@app.orchestrator('x')", str(caught.exception))
        self.assertEqual(app.functions, [])

    def test_retry_policy(self):
        self.assertEqual(nimbus.RetryPolicy(1, 0.0001).to_json(),
                         {"attempts": 1, "first_interval_ms": 1, "backoff": 2.0})
        self.assertEqual(nimbus.RetryPolicy(5, timedelta(minutes=1), 1, timedelta(hours=1)).to_json(),
                         {"attempts": 5, "first_interval_ms": 60000, "backoff": 1.0, "max_interval_ms": 3600000})
        for args, error in [((0, 1), ValueError), ((True, 1), ValueError), ((2, 0), ValueError),
                            ((2, "1s"), TypeError), ((2, 1, 0.5), ValueError), ((2, 1, float("nan")), ValueError),
                            ((2, 10, 2.0, 5), ValueError)]:
            with self.assertRaises(error, msg=args):
                nimbus.RetryPolicy(*args)


if __name__ == "__main__":
    unittest.main()
