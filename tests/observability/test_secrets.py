"""Secrets stay out of everything observability writes: with metrics,
tracing (call arguments recorded) and JSON logs (call arguments included,
DEBUG and up) all on at once, a password that travels as an RPC argument
and inside an event reaches no exported span, no metric (label or
otherwise) and no log line; the redacted arguments are there instead."""

import io
import json
import logging

from threadko.observability.logs import JsonFormatter

import tracing_support
from support import http_fetch
from traced_services import SECRET, Vault


def test_a_password_argument_reaches_no_exporter_metric_or_log_line(
        rabbit_config, web_config, web_config_port, runner_factory,
        scrape_until):
    spans = tracing_support.collector()
    Vault.rotated.clear()
    config = dict(rabbit_config, TRACING=True, TRACING_CALL_ARGS=True,
                  METRICS_ADDRESS='127.0.0.1:0', **web_config)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(call_args=True))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        runner = runner_factory(config, Vault)
        runner.start()
        reply = http_fetch(
            web_config_port, 'POST', '/login',
            body=json.dumps({'username': 'ada', 'password': SECRET})
            .encode())
        assert reply.status == 200
        assert Vault.rotated.wait_for(1) == ['ada']
        records = spans.wait_for_trace(
            5, lambda record: record['name'] == 'POST /login', 'the login')
        container = next(iter(runner.containers))
        metrics = scrape_until(container, 'the event handler counted', [(
            'threadko_entrypoint_calls_total',
            {'service': 'vault', 'method': 'on_rotated'}, 1)])
        runner.stop()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    # the spans: every name, attribute, event and status exported
    assert SECRET not in tracing_support.everything_exported(spans.records)
    login = tracing_support.one(records, 'vault/login', 'SERVER')
    assert json.loads(login['attributes']['threadko.call_args']) == {
        'username': 'ada', 'password': '********'}

    # the metrics: the whole exposition, labels and all
    assert SECRET not in metrics.text
    assert metrics.value('threadko_entrypoint_calls_total',
                         service='vault', method='login',
                         outcome='success') == 1

    # the log lines: each one JSON, none with the password
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines
    assert SECRET not in stream.getvalue()
    with_args = [line for line in lines
                 if line.get('method') == 'login' and 'call_args' in line]
    assert with_args, 'no line of the login worker carries its arguments'
    assert with_args[0]['call_args'] == {
        'username': 'ada', 'password': '********'}
