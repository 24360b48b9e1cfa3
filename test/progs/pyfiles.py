"""pyfiles: a Python test subject for crpipe's fds (issue 5).

Usage: python3 pyfiles.py PROGRESS VERDICT DIR

It holds an open file (DIR/data, read from offset 3), and a pipe to and
from a child `cat`, driven by an epoll loop: every 10 ms (the epoll
timeout) it writes the next line number into cat's stdin, and reads cat's
echo whenever epoll says cat's stdout is readable. On SIGTERM it stops
writing, reads what is still on its way back, and checks that every line
came back exactly once, in order, and that the file is where it was.
"""
import os
import select
import signal
import subprocess
import sys
import time

progress, verdict, d = sys.argv[1], sys.argv[2], sys.argv[3]
os.chdir(d)
with open("data", "wb") as f:
    f.write(b"0123456789")
data = open("data", "rb")
data.seek(3)

cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
os.set_blocking(cat.stdout.fileno(), False)
ep = select.epoll()
ep.register(cat.stdout.fileno(), select.EPOLLIN)

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
sent = 0
buf = b""
got = []
why = None
prog = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def drain():
    global buf
    while True:
        try:
            chunk = os.read(cat.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        got.extend(int(x) for x in lines)


ticks = 0
last = time.monotonic()
while not stop:
    for fd, ev in ep.poll(0.01):
        drain()
    now = time.monotonic()
    if now - last >= 0.01:
        last = now
        sent += 1
        cat.stdin.write(b"%d\n" % sent)
        ticks += 1
        os.pwrite(prog, b"%d\n" % ticks, 0)

deadline = time.monotonic() + 2
while len(got) < sent and time.monotonic() < deadline:
    for fd, ev in ep.poll(0.05):
        drain()
if got != list(range(1, sent + 1)):
    bad = next((i for i, v in enumerate(got) if v != i + 1), len(got))
    why = "sent %d lines, got %d back; first wrong at %d: %r" % (sent, len(got), bad, got[bad:bad + 3])
elif data.tell() != 3 or data.read(2) != b"34":
    why = "data file offset %d" % data.tell()
cat.kill()
with open(verdict + ".tmp", "w") as f:
    f.write("FAIL %s\n" % why if why else "PASS %d\n" % ticks)
os.rename(verdict + ".tmp", verdict)
sys.exit(1 if why else 0)
