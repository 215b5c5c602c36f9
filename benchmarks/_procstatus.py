"""Memory of the running process as Linux reports it, shared by the benchmarks."""


def status_gb(key: str) -> float:
    """A memory line of /proc/self/status in GB: ``VmHWM`` (peak resident set) or ``VmRSS``
    (now). Not ``ru_maxrss`` for the peak: on Linux that keeps the parent's RSS at fork
    across exec, so a child started after the parent wrote a large file reported the
    parent's 2.5 GB as its own. NaN where the line is missing (not Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024**2
    return float("nan")
