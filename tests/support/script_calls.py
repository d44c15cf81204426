"""Which of taskpool's Lua scripts Redis runs, and how often, seen with MONITOR."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from types import TracebackType

import redis as redis_py

from taskpool.liveness import LIVENESS
from taskpool.result_store import STORE_RESULT
from taskpool.transport import POP_AND_RECORD

#: The scripts by the SHA1 that EVALSHA names them by.
SCRIPTS = {
    hashlib.sha1(text.encode()).hexdigest(): name
    for name, text in (("pop", POP_AND_RECORD), ("store", STORE_RESULT), ("liveness", LIVENESS))
}
#: A MONITOR line of an EVALSHA (run by a client, not from inside a script): who sent it, and
#: the script's SHA1.
EVALSHA = re.compile(rb'^[\d.]+ \[\d+ ([^\]]+)\] "(?i:evalsha)" "([0-9a-f]{40})"')
#: A MONITOR line of a BRPOP, and who sent it.
BRPOP = re.compile(rb'^[\d.]+ \[\d+ ([^\]]+)\] "(?i:brpop)"')
#: Sent by ``__exit__`` so the listener knows it has seen everything before it.
END = "taskpool-script-calls-end"


class ScriptCalls:
    """Counts, by name (``pop``, ``store``, ``liveness``; ``other``), the scripts Redis runs
    between entering and leaving, on a connection of its own that MONITORs; ``sent`` also
    lists the BRPOPs, each entry with the client address that sent it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts: Counter[str] = Counter()
        #: In the order Redis ran them, each script by name and each BRPOP, with who sent it.
        self.sent: list[tuple[str, str]] = []
        self._client = redis_py.Redis(port=port)
        self._monitor = self._client.monitor()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> ScriptCalls:
        self._monitor.__enter__()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._client.echo(END)
            self._thread.join(30)
            assert not self._thread.is_alive(), "MONITOR did not show the end marker"
        finally:
            self._monitor.__exit__()
            self._client.close()

    def _listen(self) -> None:
        connection = self._monitor.connection
        while True:
            line = connection.read_response(disable_decoding=True)
            if END.encode() in line:
                return
            found = EVALSHA.match(line)
            if found:
                name = SCRIPTS.get(found.group(2).decode(), "other")
                self.counts[name] += 1
                self.sent.append((name, found.group(1).decode()))
            elif waited := BRPOP.match(line):
                self.sent.append(("BRPOP", waited.group(1).decode()))
