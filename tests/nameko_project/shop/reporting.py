"""nameko-sentry's reporter, with the one change it needs without
eventlet: SentryReporter.setup() gives raven's client the
EventletHTTPTransport, which refuses to send anything when eventlet is not
installed ("EventletHTTPTransport requires eventlet."), so every report
would be lost. This subclass gives it raven's default transport instead (a
background thread that posts the events), and keeps the rest: what is
reported, when, and with which context."""

import nameko_sentry
from raven import Client


class SentryReporter(nameko_sentry.SentryReporter):

    def setup(self):
        super(SentryReporter, self).setup()
        sentry_config = self.container.config.get('SENTRY') or {}
        self.client = Client(
            sentry_config.get('DSN'),
            **sentry_config.get('CLIENT_CONFIG', {}))
