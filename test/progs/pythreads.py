"""pythreads: a Python test subject for crpipe with threads.

Usage: python3 pythreads.py PROGRESS VERDICT. Four threads count; the main
thread writes its tick count to PROGRESS every 10 ms. On SIGTERM it checks
that every thread still counts and writes "PASS <ticks>" or "FAIL <why>".
"""
import os
import signal
import sys
import threading
import time

progress, verdict = sys.argv[1], sys.argv[2]
counts = [0] * 4
stop = threading.Event()


def work(i):
    while True:
        counts[i] += 1
        time.sleep(0.001)


for i in range(4):
    threading.Thread(target=work, args=(i,), daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
ticks = 0
fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while not stop.is_set():
    ticks += 1
    os.pwrite(fd, b"%d\n" % ticks, 0)
    time.sleep(0.01)
before = list(counts)
time.sleep(0.1)
why = None
for i, (a, b) in enumerate(zip(before, counts)):
    if b <= a:
        why = "thread %d stopped counting" % i
with open(verdict, "w") as f:
    f.write("FAIL %s\n" % why if why else "PASS %d\n" % ticks)
sys.exit(1 if why else 0)
