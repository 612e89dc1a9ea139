"""Wrong entity types are refused when the service class is defined, with a
message that says what to use instead."""

import pytest

from threadko.messaging import Exchange, Publisher, Queue, consume


class KombuLikeQueue:
    """Stands in for a kombu Queue: not threadko's type."""

    name = 'q'


def test_consume_refuses_a_foreign_queue():
    with pytest.raises(TypeError) as raised:
        class Service:
            name = 'service'

            @consume(KombuLikeQueue())
            def handle(self, body):
                pass
    assert 'threadko.messaging' in str(raised.value)


def test_publisher_refuses_foreign_entities():
    with pytest.raises(TypeError, match='exchange must be a threadko'):
        Publisher(exchange='plain-name')
    with pytest.raises(TypeError, match='each of declare'):
        Publisher(exchange=Exchange('x'), declare=[KombuLikeQueue()])


def test_publisher_takes_threadko_entities():
    Publisher(exchange=Exchange('x'), declare=[Queue('q', exchange='x')])


def test_undeliverable_message_is_where_nameko_2_users_import_it_from():
    from threadko.amqp import UndeliverableMessage
    from threadko.exceptions import UndeliverableMessage as canonical
    assert UndeliverableMessage is canonical
