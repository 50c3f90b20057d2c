"""Orchestrations (PROTOCOL.md section 7): the worker side of the durable engine.

An orchestrator is a generator function of `ctx` that yields the tasks it waits for. The instance's history
is the truth: the worker applies its events in order, each completion settling a task, and resumes the
generator as soon as the task it waits on settles. Between steps the worker keeps the suspended generator
(a session), so a step usually applies its new events only; without one it replays the whole history.

Imports nothing heavy (`import nimbus` stays cheap): `uuid` loads when `ctx.new_uuid()` is first used.
"""

import json
import re
from collections import OrderedDict, deque
from collections.abc import Generator
from datetime import datetime, timedelta, timezone

MAX_SESSIONS = 1000  # orchestrations a worker holds between steps; the least recently used goes first

_PENDING, _DONE, _FAILED = 0, 1, 2
_UNSET = object()

# the history event that records each action, and the action each such event records
_RECORDED_BY = {
    "call_activity": "task_scheduled",
    "create_timer": "timer_created",
    "call_sub_orchestrator": "sub_scheduled",
}
_ACTION_OF = {event: action for action, event in _RECORDED_BY.items()}
_WITH_ID = frozenset(("task_scheduled", "task_completed", "task_failed", "timer_created", "timer_fired",
                      "sub_scheduled", "sub_completed", "sub_failed"))

_check_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class TaskFailedError(Exception):
    """An activity or sub-orchestration failed (after its last retry). Raised into the orchestrator at the
    `yield` that waits for it, where the code may catch it: `name` is the activity's (or the
    sub-orchestrator's) name, `code` and `message` come from its error."""

    def __init__(self, name, code, message, kind="activity"):
        super().__init__("%s %r failed: %s: %s" % (kind, name, code, message))
        self.name = name
        self.code = code
        self.message = message


class RetryPolicy:
    """How the engine retries a failing activity: `attempts` in all (the first included), waiting
    `first_interval` (a timedelta, or seconds) before the second, each wait `backoff` times the one before,
    capped at `max_interval` (None: no cap). The host runs the retries; the orchestrator sees only the
    outcome of the last attempt."""

    __slots__ = ("attempts", "first_interval_ms", "backoff", "max_interval_ms")

    def __init__(self, attempts, first_interval, backoff=2.0, max_interval=None):
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(
                "RetryPolicy: attempts must be an int >= 1 (the first attempt included), not %r" % (attempts,)
            )
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 1 <= backoff < float("inf"):
            raise ValueError("RetryPolicy: backoff must be a number >= 1, not %r" % (backoff,))
        self.attempts = attempts
        self.first_interval_ms = _interval_ms(first_interval, "first_interval")
        self.backoff = float(backoff)
        self.max_interval_ms = None if max_interval is None else _interval_ms(max_interval, "max_interval")
        if self.max_interval_ms is not None and self.max_interval_ms < self.first_interval_ms:
            raise ValueError("RetryPolicy: max_interval must not be shorter than first_interval")

    def to_json(self):
        """The action's `retry` field (PROTOCOL.md section 7.2); `max_interval_ms` only when capped."""
        out = {"attempts": self.attempts, "first_interval_ms": self.first_interval_ms, "backoff": self.backoff}
        if self.max_interval_ms is not None:
            out["max_interval_ms"] = self.max_interval_ms
        return out

    def __repr__(self):
        return "RetryPolicy(%d, first_interval_ms=%d, backoff=%r, max_interval_ms=%r)" % (
            self.attempts, self.first_interval_ms, self.backoff, self.max_interval_ms)


def _interval_ms(value, what):
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value
    else:
        raise TypeError("RetryPolicy: %s is a timedelta or seconds, not %r" % (what, value))
    if not 0 < seconds < float("inf"):
        raise ValueError("RetryPolicy: %s must be positive, not %r" % (what, value))
    return max(1, round(seconds * 1000))


# --- tasks ----------------------------------------------------------------------------------------------


class Task:
    """Something an orchestrator waits for: `yield` it to get its result (a failed task raises its
    TaskFailedError there instead). `is_completed` and `is_faulted` tell how it ended; `result` is its
    value (None while pending; raises the TaskFailedError of a failed task), `exception` its error."""

    __slots__ = ("_session", "_state", "_value", "_order", "_parents")

    def __init__(self, session):
        self._session = session
        self._state = _PENDING
        self._value = None  # the result; a TaskFailedError when failed
        self._order = 0  # position in history of the event that settled it: how task_any picks a winner
        self._parents = None  # the task_all / task_any tasks waiting on this one

    @property
    def is_completed(self):
        return self._state != _PENDING

    @property
    def is_faulted(self):
        return self._state == _FAILED

    @property
    def result(self):
        if self._state == _FAILED:
            raise self._value.with_traceback(None)
        return self._value

    @property
    def exception(self):
        return self._value if self._state == _FAILED else None

    def _settle(self, state, value, order):
        self._state = state
        self._value = value
        self._order = order
        parents = self._parents
        if parents is not None:
            self._parents = None
            for parent in parents:
                if parent._state == _PENDING:
                    parent._child_settled(self)

    def _watch(self, parent):
        if self._parents is None:
            self._parents = [parent]
        else:
            self._parents.append(parent)

    def __repr__(self):
        return "<%s %s>" % (type(self).__name__, ("pending", "completed", "failed")[self._state])


class _Scheduled(Task):
    """An activity, timer or sub-orchestration: an action with an id."""

    __slots__ = ("_id", "_kind", "_name")

    def __init__(self, session, id, kind, name):
        Task.__init__(self, session)
        self._id = id
        self._kind = kind
        self._name = name

    def _failure(self, error):
        if not isinstance(error, dict):
            error = {}
        kind = "sub-orchestration" if self._kind == "call_sub_orchestrator" else "activity"
        return TaskFailedError(self._name, error.get("code", "error"), error.get("message", ""), kind)

    def __repr__(self):
        return "<%s %d %s %s>" % (self._kind, self._id, self._name, ("pending", "completed", "failed")[self._state])


class _External(Task):
    __slots__ = ("_name",)

    def __init__(self, session, name):
        Task.__init__(self, session)
        self._name = name


class _All(Task):
    """task_all: the children's results in their order; fails with the first child to fail."""

    __slots__ = ("_children", "_left")

    def __init__(self, session, children):
        Task.__init__(self, session)
        self._children = children
        left = 0
        failed = None
        for child in children:
            if child._state == _PENDING:
                left += 1
                child._watch(self)
            elif child._state == _FAILED and (failed is None or child._order < failed._order):
                failed = child
        self._left = left
        if failed is not None:
            self._settle(_FAILED, failed._value, failed._order)
        elif left == 0:
            order = max([c._order for c in children], default=session.seen)
            self._settle(_DONE, [c._value for c in children], order)

    def _child_settled(self, child):
        if child._state == _FAILED:
            self._settle(_FAILED, child._value, child._order)
            return
        self._left -= 1
        if self._left == 0:
            self._settle(_DONE, [c._value for c in self._children], child._order)


class _Any(Task):
    """task_any: the first child to settle (in history order), failed or not."""

    __slots__ = ()

    def __init__(self, session, children):
        Task.__init__(self, session)
        winner = None
        for child in children:
            if child._state != _PENDING and (winner is None or child._order < winner._order):
                winner = child
        if winner is not None:
            self._settle(_DONE, winner, winner._order)
        else:
            for child in children:
                child._watch(self)

    def _child_settled(self, child):
        self._settle(_DONE, child, child._order)


# --- what the orchestrator sees -------------------------------------------------------------------------


class OrchestrationContext:
    """The orchestrator's only argument. Everything it gives is the same on every replay: time is the
    history's, ids derive from the instance, and results come from history.

        @app.orchestrator
        def research(ctx):
            topic = ctx.get_input()
            urls = yield ctx.call_activity("search", topic)
            pages = yield ctx.task_all([ctx.call_activity("fetch", u) for u in urls])
            return {"topic": topic, "pages": len(pages)}
    """

    __slots__ = ("_s",)

    def __init__(self, session):
        self._s = session

    @property
    def instance_id(self):
        return self._s.instance

    @property
    def version(self):
        """The instance's version stamp (PROTOCOL.md section 7.1), or None."""
        return self._s.version

    @property
    def is_replaying(self):
        """True while the worker replays history it had not kept (log and side effects only when False)."""
        return self._s.replaying

    @property
    def current_utc_datetime(self):
        """The commit time of the event being applied: a timezone-aware UTC datetime."""
        s = self._s
        at = s.at
        cached = s.time
        if cached[0] is not at:
            cached = s.time = (at, _parse_time(at))
        return cached[1]

    def get_input(self):
        """The orchestration's input (a JSON value)."""
        return self._s.input

    def call_activity(self, name, input=None, retry=None):
        """Run the activity `name` with `input`; `retry` is a nimbus.RetryPolicy (the host retries)."""
        _check_name(name, "call_activity")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError("ctx.call_activity(%r): retry is a nimbus.RetryPolicy, not %r" % (name, retry))
        return self._s.schedule("call_activity", name, input, retry)

    def call_sub_orchestrator(self, name, input=None, instance_id=None):
        """Run the orchestrator `name` as a child instance (`instance_id`: its id, None lets the host choose)."""
        _check_name(name, "call_sub_orchestrator")
        if instance_id is not None and (not isinstance(instance_id, str) or not instance_id):
            raise TypeError(
                "ctx.call_sub_orchestrator(%r): instance_id is a non-empty string, not %r" % (name, instance_id)
            )
        return self._s.schedule("call_sub_orchestrator", name, input, instance_id)

    def create_timer(self, fire_at):
        """A task that completes at `fire_at` (a datetime; a naive one is taken as UTC)."""
        if not isinstance(fire_at, datetime):
            raise TypeError(
                "ctx.create_timer() takes a datetime, not %r (write ctx.current_utc_datetime + timedelta(...))"
                % (fire_at,)
            )
        return self._s.schedule("create_timer", _format_time(fire_at), None, None)

    def wait_for_external_event(self, name):
        """A task that completes with the data of the next event `name` raised to this instance that no
        earlier wait took (in history order)."""
        _check_name(name, "wait_for_external_event")
        return self._s.wait(name)

    def task_all(self, tasks):
        """A task that completes with the list of the tasks' results (in their order), or fails as soon as
        one of them fails."""
        return _All(self._s, self._children(tasks, "task_all"))

    def task_any(self, tasks):
        """A task that completes with the first of the tasks to complete (its `.result`), in history order."""
        children = self._children(tasks, "task_any")
        if not children:
            raise ValueError("ctx.task_any() needs at least one task")
        return _Any(self._s, children)

    def set_custom_status(self, value):
        """A JSON value the host shows in the instance's status."""
        _json_arg(value, "ctx.set_custom_status(): the value")
        self._s.custom_status = value

    def continue_as_new(self, input):
        """When the orchestrator returns, start it over with `input` and a fresh history."""
        _json_arg(input, "ctx.continue_as_new(): the input")
        self._s.continue_input = input

    def new_uuid(self):
        """A UUID (str) that is the same on every replay: uuid5 of the instance id, the current time and a
        counter."""
        import uuid

        s = self._s
        name = "%s_%s_%d" % (s.instance, _format_time(self.current_utc_datetime), s.uuids)
        s.uuids += 1
        return str(uuid.uuid5(uuid.NAMESPACE_URL, name))

    def _children(self, tasks, what):
        children = list(tasks)
        for child in children:
            if not isinstance(child, Task) or child._session is not self._s:
                raise TypeError("ctx.%s() takes tasks made by this ctx, not %r" % (what, child))
        return children

    def __repr__(self):
        return "OrchestrationContext(%r)" % (self._s.instance,)


def _check_name(name, what):
    if not isinstance(name, str) or not name:
        raise TypeError("ctx.%s(): the name is a non-empty string, not %r" % (what, name))


def _json_arg(value, what):
    try:
        _check_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError("%s is not JSON: %s" % (what, exc)) from None


class _Nondeterminism(BaseException):
    """The code asked for something else than history recorded. A BaseException: `except Exception:`
    in user code must not swallow it (and the session notes it anyway)."""


def _not_a_task(value):
    return TypeError(
        "an orchestrator yields tasks made by its ctx (ctx.call_activity(...), ctx.create_timer(...), "
        "ctx.task_all(...), ...), not %r" % (value,)
    )


def _label(event):
    """How a scheduling event is named in a nondeterminism message: its name, a timer's fire_at."""
    return event.get("fire_at") if event.get("type") == "timer_created" else event.get("name")


def _mismatch(id, event, kind, name):
    asks = "nothing" if kind is None else "%s %s" % (kind, name)
    return "step %d: history has %s %s, the code now asks for %s" % (id, event.get("type"), _label(event), asks)


def _matches(kind, name, event):
    """The scheduling event records this action: same kind, and same name (timers have none to compare)."""
    if event.get("type") != _RECORDED_BY[kind]:
        return False
    return kind == "create_timer" or event.get("name") == name


# --- one instance ---------------------------------------------------------------------------------------


class StepError(ValueError):
    """The step's data is not what PROTOCOL.md section 7.1 describes (answered 400 invalid_envelope)."""


class _Session:
    """One orchestration instance as the worker holds it between steps: the suspended generator, the tasks
    it may still wait on, and how far into the history it is."""

    __slots__ = (
        "function", "instance", "version", "execution", "log", "ctx", "gen", "input", "first_at", "seen", "at",
        "time", "replaying", "next_id", "pending", "ahead", "unconfirmed", "waits", "raised", "waiting",
        "actions", "state", "result", "custom_status", "continue_input", "broken", "uuids",
    )

    def __init__(self, function, instance, version, execution, log):
        self.function = function
        self.instance = instance
        self.version = version
        self.execution = execution
        self.log = log
        self.ctx = OrchestrationContext(self)
        self.gen = None
        self.input = None
        self.first_at = None  # the `started` event's `at`: tells generations of one instance id apart
        self.seen = 0  # history events applied
        self.at = None  # the `at` of the event being applied, as sent
        self.time = (None, None)  # (at, datetime): the last one parsed
        self.replaying = False
        self.next_id = 0  # the id of the next action the code asks for
        self.pending = {}  # id -> _Scheduled task not settled yet
        self.ahead = {}  # id -> scheduling event in history the code has not asked for yet
        self.unconfirmed = {}  # id -> (kind, name) of actions answered that history does not show yet
        self.waits = {}  # event name -> deque of _External tasks waiting for it
        self.raised = {}  # event name -> deque of (data, order) no wait has taken yet
        self.waiting = None  # the task the generator is suspended on
        self.actions = []  # this step's new actions
        self.state = "running"
        self.result = None  # the output, error or next input, by state
        self.custom_status = _UNSET
        self.continue_input = _UNSET
        self.broken = None  # the nondeterminism message
        self.uuids = 0

    def resumes(self, function, execution, past_length, past):
        """Whether this session can take a step that starts at `past_length` events without replay."""
        if self.function is not function or self.execution != execution:
            return False
        if past is not None and past_length and (type(past[0]) is not dict or past[0].get("at") != self.first_at):
            return False  # another generation of the same instance id
        if past_length == self.seen:
            return True
        # The host may count the scheduling events it wrote for our last actions without sending them.
        if self.unconfirmed and past_length == self.seen + len(self.unconfirmed):
            self.seen = past_length
            self.unconfirmed.clear()
            return True
        return False

    def run(self, past, new):
        """Apply `past` (replaying) then `new`: the step's outcome (PROTOCOL.md section 7.1)."""
        self.actions = []
        if past:
            self._index(past)
        self._index(new)
        if self.broken is None:
            if past:
                self.replaying = True
                self._apply(past)
                self.replaying = False
            self._apply(new)
        if self.ahead and self.broken is None and self.state != "failed":
            id = min(self.ahead)  # history holds actions the code did not ask for
            self._break(_mismatch(id, self.ahead[id], None, None))
        return self._outcome()

    def _index(self, events):
        """Check the events' shape and note the scheduling events, so each action the code asks for is
        checked against history when asked (section 7.3)."""
        ahead = self.ahead
        for event in events:
            if type(event) is not dict:
                raise StepError("an orchestration event is an object with a type, not %s" % (_kind(event),))
            kind = event.get("type")
            if kind in _WITH_ID:
                id = event.get("id")
                if type(id) is not int:
                    raise StepError("a %s event needs an integer id, not %r" % (kind, id))
                action = _ACTION_OF.get(kind)
                if action is None:
                    continue
                asked = self.unconfirmed.pop(id, None)
                if asked is not None:
                    if not _matches(asked[0], asked[1], event) and self.broken is None:
                        self._break(_mismatch(id, event, asked[0], asked[1]))
                elif id >= self.next_id and id not in ahead:
                    ahead[id] = event
            elif kind == "event_raised" and not isinstance(event.get("name"), str):
                raise StepError("an event_raised event needs a string name, not %r" % (event.get("name"),))

    def _apply(self, events):
        handlers = _HANDLERS
        for event in events:
            if self.state != "running":
                return
            self.seen += 1
            at = event.get("at")
            if at is not None:
                self.at = at
            handler = handlers.get(event.get("type"))
            if handler is not None:
                handler(self, event)

    # event handlers

    def _started(self, event):
        if self.first_at is not None or self.gen is not None:
            return  # a second `started`: nothing to start
        self.first_at = event.get("at")
        self.input = event.get("input")
        if self.version is None:
            self.version = event.get("version")
        try:
            result = self.function.handler(self.ctx)
        except _Nondeterminism:
            self._break(self.broken)
            return
        except Exception as exc:
            self._fail(exc)
            return
        if isinstance(result, Generator):
            self.gen = result
            self._drive(result.send, None)
        elif hasattr(result, "__await__") or hasattr(result, "__anext__"):
            if hasattr(result, "__await__") and hasattr(result, "close"):
                result.close()  # no "never awaited" warning
            self._fail(TypeError(
                "orchestrator %r returned %s: orchestrators are plain generator functions (`def f(ctx):` with "
                "`yield`)" % (self.function.name, type(result).__name__)))
        else:
            self._finish(result)

    def _completed(self, event):
        self._settle(event, _DONE, event.get("result"))

    def _failed(self, event):
        self._settle(event, _FAILED, event.get("error"))

    def _fired(self, event):
        self._settle(event, _DONE, None)

    def _raised(self, event):
        name = event["name"]
        waits = self.waits.get(name)
        if waits:
            task = waits.popleft()
            task._settle(_DONE, event.get("data"), self.seen)
            self._wake()
        else:
            self.raised.setdefault(name, deque()).append((event.get("data"), self.seen))

    def _settle(self, event, state, value):
        task = self.pending.pop(event["id"], None)
        if task is None:
            return  # not asked for: a duplicate, or divergent code (then `ahead` says so)
        if state == _FAILED:
            value = task._failure(value)
        task._settle(state, value, self.seen)
        self._wake()

    # the generator

    def _wake(self):
        waiting = self.waiting
        if waiting is not None and waiting._state != _PENDING:
            self.waiting = None
            if waiting._state == _DONE:
                self._drive(self.gen.send, waiting._value)
            else:
                self._drive(self.gen.throw, waiting._value.with_traceback(None))

    def _drive(self, method, arg):
        """Resume the generator with `method(arg)` and run it until it waits on a pending task or ends."""
        gen = self.gen
        while True:
            try:
                task = method(arg)
            except StopIteration as stop:
                if self.broken is not None:  # it caught the nondeterminism error, then returned
                    self._break(self.broken)
                else:
                    self._finish(stop.value)
                return
            except _Nondeterminism:
                self._break(self.broken)
                return
            except Exception as exc:
                if self.broken is not None:
                    self._break(self.broken)
                else:
                    self._fail(exc)
                return
            if self.broken is not None:  # the code caught the nondeterminism error
                self._break(self.broken)
                return
            if isinstance(task, Task) and task._session is self:
                state = task._state
                if state == _PENDING:
                    self.waiting = task
                    return
                if state == _DONE:
                    method, arg = gen.send, task._value
                else:
                    method, arg = gen.throw, task._value.with_traceback(None)
            else:
                method, arg = gen.throw, _not_a_task(task)

    def schedule(self, kind, name, input, extra):
        """The code asks for an action: checked against history when history has it, else a new action."""
        id = self.next_id
        if kind != "create_timer":
            # Before history is consulted: a replay must refuse what the live run refused.
            _json_arg(input, "ctx.%s(%r): the input" % (kind, name))
        event = self.ahead.pop(id, None)
        if event is not None:
            if not _matches(kind, name, event):
                self.broken = _mismatch(id, event, kind, name)
                raise _Nondeterminism(self.broken)
        else:
            self.actions.append(_action(kind, id, name, input, extra))
            self.unconfirmed[id] = (kind, name)
        self.next_id = id + 1
        task = _Scheduled(self, id, kind, name)
        self.pending[id] = task
        return task

    def wait(self, name):
        task = _External(self, name)
        raised = self.raised.get(name)
        if raised:
            data, order = raised.popleft()
            task._settle(_DONE, data, order)
        else:
            waits = self.waits.get(name)
            if waits is None:
                waits = self.waits[name] = deque()
            waits.append(task)
        return task

    # endings

    def _finish(self, value):
        if self.continue_input is not _UNSET:
            self.state = "continued_as_new"
            self.result = self.continue_input
            return
        try:
            _check_json(value)
        except (TypeError, ValueError, RecursionError) as exc:
            self._fail(TypeError("the orchestrator's output is not JSON: %s" % (exc,)))
            return
        self.state = "completed"
        self.result = value

    def _fail(self, exc):
        self.log.error(
            "orchestration %s failed: the orchestrator raised an error", self.instance,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        text = str(exc)
        self.state = "failed"
        self.result = {"code": "orchestrator_error", "message": type(exc).__name__ + (": " + text if text else "")}

    def _break(self, message):
        self.broken = message
        self.state = "failed"
        self.result = {"code": "nondeterminism", "message": message}
        self.log.error("orchestration %s failed: %s", self.instance, message)
        self.close()

    def _outcome(self):
        out = {"actions": [] if self.broken is not None else self.actions, "state": self.state}
        if self.custom_status is not _UNSET:
            out["custom_status"] = self.custom_status
        state = self.state
        if state == "completed":
            out["output"] = self.result
        elif state == "failed":
            out["error"] = self.result
        elif state == "continued_as_new":
            out["input"] = self.result
        return out

    def close(self):
        """Drop the suspended generator (its `finally:` blocks run now rather than whenever it is collected)."""
        gen = self.gen
        self.gen = None
        self.waiting = None
        if gen is not None:
            try:
                gen.close()
            except (Exception, _Nondeterminism):
                pass


_HANDLERS = {
    "started": _Session._started,
    "task_completed": _Session._completed,
    "task_failed": _Session._failed,
    "timer_fired": _Session._fired,
    "sub_completed": _Session._completed,
    "sub_failed": _Session._failed,
    "event_raised": _Session._raised,
}


def _action(kind, id, name, input, extra):
    """A new action as answered to the host (PROTOCOL.md section 7.2); its input already checked to be JSON."""
    if kind == "create_timer":
        return {"type": kind, "id": id, "fire_at": name}
    action = {"type": kind, "id": id, "name": name, "input": input}
    if extra is not None:
        if kind == "call_activity":
            action["retry"] = extra.to_json()
        else:
            action["instance"] = extra
    return action


# --- the worker's sessions ------------------------------------------------------------------------------


class Sessions:
    """The orchestrations a worker holds between steps, keyed by instance id, least recently used first."""

    def __init__(self, limit=MAX_SESSIONS):
        self.limit = limit
        self.held = OrderedDict()

    def step(self, function, data, log):
        """Run one step (PROTOCOL.md section 7.1): the answer, or StepError when `data` is no step."""
        instance, version, execution, past_length, past, new = _parse_step(data)
        held = self.held
        session = held.pop(instance, None)
        if session is not None and not session.resumes(function, execution, past_length, past):
            session.close()
            session = None
        if session is None:
            if past is None and past_length:
                return {"need_history": True}
            session = _Session(function, instance, version, execution, log)
        else:
            past = None  # held at past_length: nothing to replay
        try:
            outcome = session.run(past, new)
        except BaseException:
            session.close()
            raise
        if session.state == "running":
            held[instance] = session
            if len(held) > self.limit:
                held.popitem(last=False)[1].close()
        return outcome

    def __len__(self):
        return len(self.held)


def _parse_step(data):
    if type(data) is not dict:
        raise StepError(
            'an orchestrator step\'s data is an object like {"instance", "past_length", "past", "new"}, not %s'
            % (_kind(data),)
        )
    instance = data.get("instance")
    if not isinstance(instance, str) or not instance:
        raise StepError("the step's instance must be a non-empty string, not %r" % (instance,))
    past_length = data.get("past_length", 0)
    if type(past_length) is not int or past_length < 0:
        raise StepError("the step's past_length must be an integer >= 0, not %r" % (past_length,))
    past = data.get("past")
    if past is not None:
        if type(past) is not list:
            raise StepError("the step's past must be an array of events or null, not %s" % (_kind(past),))
        if len(past) != past_length:
            raise StepError("the step's past has %d events but past_length says %d" % (len(past), past_length))
    new = data.get("new")
    if new is None:
        new = []
    elif type(new) is not list:
        raise StepError("the step's new must be an array of events, not %s" % (_kind(new),))
    execution = data.get("execution")
    return instance, data.get("version"), execution, past_length, past, new


def _kind(value):
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


# --- time -----------------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):?(\d\d))?\Z"
)


def _parse_time(text):
    """An RFC 3339 time (any number of fraction digits; no offset means UTC) as an aware UTC datetime."""
    if text is None:
        return None
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("the event time %r is not an RFC 3339 time" % (text,))
    year, month, day, hour, minute, second, fraction, _, sign, off_h, off_m = match.groups()
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    value = datetime(int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59), micro,
                     tzinfo=timezone.utc)
    if sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        value = value - offset if sign == "+" else value + offset
    return value


def _format_time(value):
    """RFC 3339 in UTC with a `Z` (microseconds only when there are some); a naive datetime is UTC."""
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (
        value.year, value.month, value.day, value.hour, value.minute, value.second)
    if value.microsecond:
        text += ".%06d" % value.microsecond
    return text + "Z"
