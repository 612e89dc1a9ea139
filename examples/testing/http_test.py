"""Testing ``@http`` entrypoints over real HTTP.

``web_config`` serves the test's containers on a free local port, and
``web_session`` is an HTTP client for it.
"""

from examples.http import HttpService


def test_get(container_factory, web_config, web_session):
    container_factory(HttpService).start()
    response = web_session.get("/get/42")
    assert response.status_code == 200
    assert response.json() == {"value": 42}
