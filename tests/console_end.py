# Drives the stock `virsh console` under a pseudo-terminal until the guest
# goes away, by powering off from its shell ("poweroff") or by another
# client's `virsh destroy` ("destroy"), and reports whether virsh exited by
# itself, and how.
import os, pty, select, subprocess, sys, time

uri, name, how = sys.argv[1], sys.argv[2], sys.argv[3]

pid, fd = pty.fork()
if pid == 0:
    os.execvp("virsh", ["virsh", "-c", uri, "console", name])

seen = b""


def until(needle, timeout=20):
    global seen
    end = time.time() + timeout
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not ready:
            sys.exit(f"timed out waiting for {needle!r}; got {seen!r}")
        try:
            seen += os.read(fd, 4096)
        except OSError:
            sys.exit(f"console closed while waiting for {needle!r}; got {seen!r}")


until(b"Escape character")
time.sleep(0.3)
os.write(fd, b"\r")
until(b"> ")
if how == "poweroff":
    os.write(fd, b"poweroff\r")
else:
    subprocess.run(["virsh", "-c", uri, "destroy", name], check=True, capture_output=True)

# virsh must leave by itself; drain its output meanwhile.
end = time.time() + 15
while time.time() < end:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("virsh exited:", os.WEXITSTATUS(status))
        break
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            seen += os.read(fd, 4096)
        except OSError:
            pass
else:
    os.kill(pid, 9)
    sys.exit(f"virsh console did not exit after {how}; got {seen[-400:]!r}")
