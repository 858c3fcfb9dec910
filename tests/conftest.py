"""Shared test fixtures: small models, deterministic seeds, few threads."""
from __future__ import annotations

import os

import pytest
import torch

# The machine has 2 cores; several test processes may share them.
torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", "2")))))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    from csa.config import ModelConfig

    return ModelConfig(rough_ngf=4, refine_ngf=4)


@pytest.fixture
def tiny_weights(tmp_path, tiny_config):
    """A random-init tiny generator saved as a safetensors model file."""
    from csa.checkpoints import save_generator
    from csa.nn.generator import build_generator

    path = tmp_path / "tiny.safetensors"
    save_generator(build_generator(tiny_config), path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are bound by per-op overhead, not arithmetic: one thread is as fast, and on a
    shared 2-core machine it avoids OpenMP threads spinning against other processes."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """A random-init tiny generator file shared by a whole test module."""
    from csa.checkpoints import save_generator
    from csa.config import ModelConfig
    from csa.nn.generator import build_generator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_generator(build_generator(ModelConfig(rough_ngf=4, refine_ngf=4)), path)
    return path


@pytest.fixture()
def http_dir(tmp_path):
    """An HTTP server on 127.0.0.1 serving a fresh folder (its listing is what pip reads as
    --find-links); yields (folder, base URL). Code that fetches weights is tested against it."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
