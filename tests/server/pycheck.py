"""The check helpers of the Python client tests (openai_client.py,
anthropic_client.py): counted checks that report a failure on stderr and
go on, so that one run lists every failure. tally() gives (checks,
failures) for the summary line."""
import json
import sys

_checks = 0
_failures = 0


def show(v):
    """A short JSON view of v (SDK objects through model_dump)."""
    try:
        s = json.dumps(v, default=lambda o: getattr(o, "model_dump", lambda: str(o))())
    except Exception:  # noqa: BLE001 - anything unprintable is shown by repr
        s = repr(v)
    return s if len(s) <= 600 else s[:600] + "..."


def fail(what, detail=None):
    global _failures
    _failures += 1
    print(f"FAIL: {what}" + ("" if detail is None else f": {detail}"), file=sys.stderr)


def check(cond, what, detail=None):
    """detail may be a callable, evaluated only on failure."""
    global _checks
    _checks += 1
    if not cond:
        fail(what, detail() if callable(detail) else detail)
    return bool(cond)


def eq(got, want, what):
    return check(got == want, what, lambda: f"expected {show(want)}, got {show(got)}")


def tally():
    return _checks, _failures
