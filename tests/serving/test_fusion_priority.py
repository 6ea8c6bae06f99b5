"""The fusion replica's threads run at a lower priority (``PRISM_FUSION_NICE``), threads it starts later too."""

import json
import subprocess
import sys

CHILD = """
import json, threading
from serving.fusion import lower_priority, thread_nices

stop = threading.Event()
threading.Thread(target=stop.wait).start()
changed = lower_priority(7)
later = {}
child = threading.Thread(target=lambda: later.update(thread_nices()))
child.start(); child.join()
print(json.dumps({"changed": changed, "now": sorted(set(thread_nices().values())),
                  "seen_by_a_later_thread": sorted(set(later.values())), "again": lower_priority(7)}))
stop.set()
"""


def test_every_thread_is_reniced_once_and_new_threads_inherit_it():
    # In a child process: renicing is one-way for an unprivileged process, and must not slow this one.
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["changed"] >= 2  # the main thread and the one started before
    assert result["now"] == [7] and result["seen_by_a_later_thread"] == [7]
    assert result["again"] == 0  # already at 7: nothing to change
