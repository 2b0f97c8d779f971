"""``trustmesh attack``: attack a running stack from outside and report, for each
control, the attack, what was observed and the audit events that recorded it.

A control passes only when the stack refused what it had to refuse *and* (where the
control is one the stack records) the refusal is in the audit log: the evidence is the
event ids, looked up by the trace each answer names (``traceresponse``). Nothing here
weakens the stack: the probes are requests any outsider could send, and those that need
an identity use the operator's (the one identity this machine's user holds).

- :mod:`trustmesh.attack.probes`: the controls and the attacks on them;
- :mod:`trustmesh.attack.report`: the JSON document and the self-contained HTML report.
"""

from trustmesh.attack.probes import Control, Stack, run_attacks

__all__ = ["Control", "Stack", "run_attacks"]
