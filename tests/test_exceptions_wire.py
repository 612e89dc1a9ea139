"""Exceptions on the wire (wire protocol §5.5): the error object's shape,
Nameko's paths for threadko's versions of Nameko's exceptions, and what a
caller gets back."""

import pytest

from threadko import exceptions, serialization
from threadko.exceptions import (
    IncorrectSignature, MalformedRequest, MethodNotFound, RemoteError,
    UnknownService, UnserializableValueError, deserialize,
    deserialize_to_instance, safe_for_serialization, serialize,
)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Let a test register exception types without leaving them behind."""
    monkeypatch.setattr(exceptions, 'registry', dict(exceptions.registry))


def through_json(data):
    body, content_type, content_encoding = serialization.encode(data)
    return serialization.decode(
        body, content_type, content_encoding,
        serialization.accepted_content_types(['json']))


def test_serialize_builtin_exception():
    # the example of the wire protocol, byte for byte
    assert serialize(ValueError('bad', 3)) == {
        'exc_type': 'ValueError',
        'exc_path': 'builtins.ValueError',
        'exc_args': ['bad', '3'],
        'value': "('bad', 3)",
    }


def test_serialize_method_not_found_uses_namekos_path():
    assert serialize(MethodNotFound('nope')) == {
        'exc_type': 'MethodNotFound',
        'exc_path': 'nameko.exceptions.MethodNotFound',
        'exc_args': ['nope'],
        'value': 'nope',
    }


@pytest.mark.parametrize('exc', [
    MalformedRequest('m'), IncorrectSignature('i'), UnknownService('svc'),
    UnserializableValueError(object()), RemoteError('KeyError', 'k'),
    exceptions.BadRequest('b'), exceptions.ConfigurationError('c'),
    exceptions.RpcTimeout('t'), exceptions.ContainerBeingKilled(),
    exceptions.ConnectionNotFound('c'), exceptions.CommandError('c'),
    exceptions.ExtensionNotFound('e'),
    exceptions.ReplyQueueExpiredWithPendingReplies('r'),
])
def test_threadkos_versions_of_nameko_exceptions_travel_as_nameko_ones(exc):
    data = serialize(exc)
    assert data['exc_path'] == 'nameko.exceptions.' + type(exc).__name__
    assert data['exc_type'] == type(exc).__name__


def test_threadko_only_exceptions_keep_their_own_path():
    data = serialize(exceptions.UndeliverableMessage('u'))
    assert data['exc_path'] == 'threadko.exceptions.UndeliverableMessage'


def test_user_exception_path_is_its_module():
    class Boom(Exception):
        pass

    assert serialize(Boom('x'))['exc_path'] == __name__ + '.Boom'


def test_unknown_service_value():
    data = serialize(UnknownService('billing'))
    assert data['exc_args'] == ['billing']
    assert data['value'] == 'Unknown service `billing`'


def test_unserializable_value_error():
    data = serialize(UnserializableValueError({1, 2}))
    assert data['exc_type'] == 'UnserializableValueError'
    assert data['exc_args'] == []
    assert data['value'] == 'Unserializable value: `{1, 2}`'


def test_args_are_made_json_safe():
    data = serialize(ValueError(
        1, 2.5, None, True, b'ab', (1, 'x'), {'k': 1, 2: [b'c']}, {3}))
    # bytes are iterables of ints, so each byte becomes a string as in
    # Nameko's safe_for_serialization on Python 3
    assert data['exc_args'] == [
        '1', '2.5', 'None', 'True', ['97', '98'], ['1', 'x'],
        {'k': '1', '2': [['99']]}, ['3']]
    # and the whole object survives JSON unchanged
    assert through_json(data) == data


def test_safe_for_serialization_keeps_strings():
    assert safe_for_serialization('text') == 'text'
    assert safe_for_serialization(['a', ('b',)]) == ['a', ['b']]


class Unprintable:
    def __str__(self):
        raise RuntimeError('no')

    def __repr__(self):
        return 'Unprintable()'


def test_unprintable_values_do_not_break_serialization():
    data = serialize(ValueError(Unprintable()))
    assert data['exc_args'] == [safe_for_serialization(Unprintable())]
    assert isinstance(data['exc_args'][0], str)


def test_unprintable_value_placeholder_matches_nameko():
    assert safe_for_serialization(Unprintable()) == '[__unicode__ failed]'


@pytest.mark.parametrize('exc_type', [
    MalformedRequest, MethodNotFound, IncorrectSignature])
def test_nameko_paths_deserialize_to_threadkos_classes(exc_type):
    exc = deserialize({
        'exc_type': exc_type.__name__,
        'exc_path': 'nameko.exceptions.' + exc_type.__name__,
        'exc_args': ['detail'], 'value': 'detail'})
    assert type(exc) is exc_type
    assert exc.args == ('detail',)


@pytest.mark.parametrize('exc_type', [
    MalformedRequest, MethodNotFound, IncorrectSignature])
def test_threadko_paths_deserialize_too(exc_type):
    exc = deserialize({
        'exc_type': exc_type.__name__,
        'exc_path': 'threadko.exceptions.' + exc_type.__name__,
        'exc_args': ['detail'], 'value': 'detail'})
    assert type(exc) is exc_type


def test_round_trip_of_method_not_found():
    exc = deserialize(through_json(serialize(MethodNotFound('nope'))))
    assert type(exc) is MethodNotFound
    assert str(exc) == 'nope'


def test_registered_user_exception_comes_back_as_itself(isolated_registry):
    @deserialize_to_instance
    class OutOfStock(Exception):
        pass

    data = through_json(serialize(OutOfStock('widget', 'none left')))
    assert data['exc_path'] == __name__ + '.OutOfStock'
    exc = deserialize(data)
    assert type(exc) is OutOfStock
    assert exc.args == ('widget', 'none left')


def test_deserialize_to_instance_returns_the_class(isolated_registry):
    class Mine(Exception):
        pass

    assert deserialize_to_instance(Mine) is Mine


def test_registered_exception_without_args(isolated_registry):
    @deserialize_to_instance
    class Empty(Exception):
        pass

    exc = deserialize({'exc_type': 'Empty',
                       'exc_path': __name__ + '.Empty', 'value': ''})
    assert type(exc) is Empty and exc.args == ()


def test_unregistered_exception_becomes_remote_error():
    exc = deserialize(through_json(serialize(ValueError('bad', 3))))
    assert type(exc) is RemoteError
    assert exc.exc_type == 'ValueError'
    assert exc.value == "('bad', 3)"
    assert str(exc) == "ValueError ('bad', 3)"


def test_unknown_path_becomes_remote_error():
    exc = deserialize({'exc_type': 'NotFound',
                       'exc_path': 'someones.errors.NotFound',
                       'exc_args': ['x'], 'value': 'no such thing'})
    assert type(exc) is RemoteError
    assert (exc.exc_type, exc.value) == ('NotFound', 'no such thing')
    assert str(exc) == 'NotFound no such thing'


def test_nameko_exceptions_not_registered_become_remote_errors():
    # Nameko registers only MalformedRequest, MethodNotFound and
    # IncorrectSignature; the others arrive as RemoteError there too
    exc = deserialize(serialize(UnknownService('billing')))
    assert type(exc) is RemoteError
    assert str(exc) == 'UnknownService Unknown service `billing`'


def test_remote_error_serializes_like_any_other():
    data = serialize(RemoteError('KeyError', 'k'))
    assert data == {
        'exc_type': 'RemoteError',
        'exc_path': 'nameko.exceptions.RemoteError',
        'exc_args': ['KeyError k'],
        'value': 'KeyError k',
    }


@pytest.mark.parametrize('action, hint', [
    ('publish to exchange \'x\' with routing key \'k\'',
     'the message itself was refused'),
    ('declare [<Queue q>]', 'it exists with different flags'),
])
def test_broker_refused_406_hint_depends_on_what_was_refused(action, hint):
    message = str(exceptions.BrokerRefused(
        action, 406, 'PRECONDITION_FAILED - something'))
    assert message.startswith('The broker refused to ' + action)
    assert hint in message
