"""A ``consul watch`` handler that costs what a callback costs: a small compiled C program.

It records its own ``CLOCK_MONOTONIC`` and ``CLOCK_REALTIME`` the moment it starts (one
line, one ``write`` with ``O_APPEND`` to the file named by ``$LAKE_MESH_STAMPS``), then
drains the JSON ``consul watch`` writes to its stdin. No shell, no reader in the measuring
process: the Go side's figure is the watch's own. ``time.monotonic()`` reads the same clock
on Linux, so both sides' stamps compare directly. Compiled with the machine's ``cc`` into a
temporary directory at benchmark time; no binary is ever committed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    const char *path = getenv("LAKE_MESH_STAMPS");
    if (path != NULL) {
        char line[96];
        int len = snprintf(line, sizeof line, "%lld.%09ld %lld.%09ld\n",
                           (long long)mono.tv_sec, mono.tv_nsec,
                           (long long)real.tv_sec, real.tv_nsec);
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            if (write(fd, line, (size_t)len) < 0) { /* nothing to do */ }
            close(fd);
        }
    }
    char buf[65536];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"""


def compile_handler() -> tuple[Path, Path]:
    """Compile the handler into a new temporary directory: ``(directory, executable)``.

    Raises:
        RuntimeError: no C compiler on the machine, or the compile failed.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) for the consul watch handler")
    directory = Path(tempfile.mkdtemp(prefix="lake-mesh-handler-"))
    source = directory / "stamp.c"
    source.write_text(SOURCE)
    executable = directory / "stamp"
    subprocess.run(
        [compiler, "-O2", "-o", str(executable), str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory, executable


def read_stamps(path: Path) -> list[float]:
    """The CLOCK_MONOTONIC seconds of each handler run recorded in ``path``, in order."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [float(line.split()[0]) for line in lines if line.strip()]
