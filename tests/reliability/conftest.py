"""One experts folder for the suite: the four domain experts of tests/experts_dir.py plus one registered expert per
adapter fault, and one server over it, started in this process as tests/test_api.py does."""
import pytest
from gradio_client import Client

from app.config import AppConfig
from app.server import ServeOptions, launch
from tests.app_process import free_port
from tests.experts_dir import build_experts_dir
from tests.reliability.broken_adapters import register_broken


@pytest.fixture(scope="session")
def experts_dir(tiny_model_dir, tmp_path_factory):
    folder = build_experts_dir(tiny_model_dir, tmp_path_factory.mktemp("reliability") / "experts")
    register_broken(folder)
    return folder


@pytest.fixture(scope="session")
def app_config(tiny_model_dir, experts_dir, tmp_path_factory):
    return AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=experts_dir,
                     cache_dir=tmp_path_factory.mktemp("cache"), max_new_tokens=4)


@pytest.fixture(scope="session")
def server(app_config):
    """(client, url) of the app over `experts_dir`."""
    demo, url = launch(app_config, ServeOptions(port=free_port()), block=False)
    try:
        yield Client(url, verbose=False), url
    finally:
        demo.close()
