import os

# Two xdist workers on a 2-core CI machine: one thread each keeps them from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def have_data():
    """Skip (visibly) when the shared data directory is absent."""
    from scnotes.datasets import data_dir

    if not (data_dir() / "SOURCES.md").exists():
        pytest.skip(f"shared data directory {data_dir()} not found (set SCNOTES_DATA_DIR)")
    return data_dir()
