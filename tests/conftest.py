import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def needs_shared(name: str):
    """Skip unless ../shared/data/<name> (real data, absent from a user's fresh clone) exists."""
    return pytest.mark.skipif(not (SHARED_DATA / name).is_dir(), reason=f"{SHARED_DATA / name} absent")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Five 200x168 synthetic photos: four train, one val."""
    from crackseg.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), n=5, width=200, height=168, seed=3)
