import functools
import inspect
import re
import threading

import pytest

from support import WAIT, Fire, fire

from threadko.containers import ServiceContainer
from threadko.exceptions import IncorrectSignature
from threadko.extensions import (
    ENTRYPOINT_EXTENSIONS_ATTR, DependencyProvider, Entrypoint, Extension,
    ProviderCollector, SharedExtension, is_dependency, is_entrypoint,
    is_extension, iter_extensions,
)


class Shared(SharedExtension):
    pass


class SharedSubclass(Shared):
    pass


class Nested(Extension):
    def __init__(self, label):
        self.label = label


class WithChildren(DependencyProvider):
    shared = Shared()
    nested = Nested('child')

    def __init__(self, value=None):
        self.value = value
        # extensions created in __init__ are found and bound too
        self.from_init = Nested('from-init')


class Service:
    name = 'service'

    first = WithChildren(value=1)
    second = WithChildren(value=2)

    @fire
    def method(self, a, b=2):
        return a + b


def make_container(service_cls=Service):
    return ServiceContainer(service_cls, {})


def test_bind_makes_a_fresh_copy_with_the_same_arguments():
    container = make_container()
    declaration = Service.first
    bound = next(d for d in container.dependencies if d.attr_name == 'first')

    assert bound is not declaration
    assert bound.value == 1
    assert bound.container == container
    assert not declaration.is_bound()
    assert bound.is_bound()


def test_bind_sets_attr_name_on_bound_instance_and_declaration():
    make_container()
    assert Service.second.attr_name == 'second'


def test_binding_a_bound_extension_is_refused():
    container = make_container()
    bound = next(iter(container.dependencies))
    with pytest.raises(RuntimeError, match='Cannot `bind` a bound extension'):
        bound.bind(container, 'again')


def test_subextensions_are_bound_including_those_made_in_init():
    container = make_container()
    bound = next(d for d in container.dependencies if d.attr_name == 'first')
    assert bound.nested.is_bound() and bound.nested.label == 'child'
    assert bound.from_init.is_bound()
    assert bound.from_init is not Service.first.from_init
    assert bound.nested in container.subextensions
    assert bound.from_init in container.subextensions


def test_shared_extension_is_shared_within_a_container_only():
    one = make_container()
    two = make_container()
    first_one = next(d for d in one.dependencies if d.attr_name == 'first')
    second_one = next(d for d in one.dependencies if d.attr_name == 'second')
    first_two = next(d for d in two.dependencies if d.attr_name == 'first')

    assert first_one.shared is second_one.shared
    assert first_one.shared is not first_two.shared
    assert one.shared_extensions == {Shared: first_one.shared}
    # a shared extension appears once among the subextensions
    assert sum(isinstance(e, Shared) for e in one.subextensions) == 1


def test_a_subclass_of_a_shared_extension_gets_its_own_instance():
    class Provider(DependencyProvider):
        base = Shared()
        sub = SharedSubclass()

    class Svc:
        name = 'svc'
        dep = Provider()

    container = make_container(Svc)
    provider = next(iter(container.dependencies))
    assert provider.base is not provider.sub
    assert set(container.shared_extensions) == {Shared, SharedSubclass}


def test_decorator_bare_and_with_arguments_returns_the_function_unchanged():
    def plain(self):
        pass

    assert fire(plain) is plain
    (declaration,) = getattr(plain, ENTRYPOINT_EXTENSIONS_ATTR)
    assert isinstance(declaration, Fire)
    assert declaration.expected_exceptions == ()

    def configured(self):
        pass

    decorated = fire(expected_exceptions=ValueError,
                     sensitive_arguments=('a',))(configured)
    assert decorated is configured
    (declaration,) = getattr(configured, ENTRYPOINT_EXTENSIONS_ATTR)
    assert declaration.expected_exceptions is ValueError
    assert declaration.sensitive_arguments == ('a',)


def test_a_method_may_carry_several_entrypoints():
    class Other(Entrypoint):
        pass

    class Svc:
        name = 'svc'

        @fire
        @Other.decorator
        def method(self):
            pass

    container = make_container(Svc)
    assert {type(e) for e in container.entrypoints} == {Fire, Other}
    assert {e.method_name for e in container.entrypoints} == {'method'}


def test_entrypoints_and_dependencies_are_inherited():
    class Child(Service):
        name = 'child'

    container = make_container(Child)
    assert {d.attr_name for d in container.dependencies} == {
        'first', 'second'}
    assert {e.method_name for e in container.entrypoints} == {'method'}


def test_check_signature_raises_incorrect_signature():
    container = make_container()
    entrypoint = next(iter(container.entrypoints))
    entrypoint.check_signature((1,), {'b': 3})
    with pytest.raises(IncorrectSignature, match='missing'):
        entrypoint.check_signature((), {})
    with pytest.raises(IncorrectSignature, match='unexpected'):
        entrypoint.check_signature((1,), {'c': 3})


class Shapes:
    name = 'shapes'

    @Fire.decorator
    def fixed(self, a, b=2):
        pass

    @Fire.decorator
    def star(self, a, *rest):
        pass

    @Fire.decorator
    def keyword_only(self, a, *, k):
        pass

    @Fire.decorator
    def optional_keyword_only(self, a, *, k=1):
        pass


@pytest.mark.parametrize('method, args, kwargs, ok', [
    ('fixed', (1,), {}, True),
    ('fixed', (1, 2), {}, True),
    ('fixed', (), {}, False),
    ('fixed', (1, 2, 3), {}, False),
    ('star', (1, 2, 3, 4), {}, True),
    ('star', (), {}, False),
    ('keyword_only', (1,), {}, False),
    ('keyword_only', (1,), {'k': 2}, True),
    ('keyword_only', (1, 2), {'k': 2}, False),
    ('optional_keyword_only', (1,), {}, True),
    ('optional_keyword_only', (1, 2), {}, False),
])
def test_check_signature_positional_shapes(method, args, kwargs, ok):
    container = make_container(Shapes)
    entrypoint = next(e for e in container.entrypoints
                      if e.method_name == method)
    if ok:
        entrypoint.check_signature(args, kwargs)
    else:
        with pytest.raises(IncorrectSignature):
            entrypoint.check_signature(args, kwargs)


def test_check_signature_words_errors_as_nameko_does():
    # Nameko callers see inspect.getcallargs' wording
    container = make_container()
    entrypoint = next(iter(container.entrypoints))
    method = getattr(container.service_cls, entrypoint.method_name)
    try:
        inspect.getcallargs(method, None, 1, 2, 3, 4)
    except TypeError as exc:
        expected = str(exc)
    with pytest.raises(IncorrectSignature) as raised:
        entrypoint.check_signature((1, 2, 3, 4), {})
    assert str(raised.value) == expected


def passing_through(fn):
    """A decorator as users write them: functools.wraps, (*args, **kwargs)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


class Decorated:
    name = 'decorated'

    @Fire.decorator
    @passing_through
    def method(self, a, b=2):
        pass


@pytest.mark.parametrize('args, kwargs, wording', [
    ((1, 2, 3), {}, 'takes from 2 to 3 positional arguments but 4'),
    ((), {}, "missing 1 required positional argument: 'a'"),
    ((1,), {'c': 3}, "unexpected keyword argument 'c'"),
])
def test_check_signature_sees_through_functools_wraps(args, kwargs, wording):
    # the wrapper takes anything; the method it wraps does not
    container = make_container(Decorated)
    entrypoint = next(iter(container.entrypoints))
    entrypoint.check_signature((1,), {'b': 3})
    with pytest.raises(IncorrectSignature, match=re.escape(wording)):
        entrypoint.check_signature(args, kwargs)


def test_sensitive_variables_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match='sensitive_arguments'):
        entrypoint = Entrypoint(sensitive_variables=('a',))
    assert entrypoint.sensitive_arguments == ('a',)


def test_reprs_name_class_service_and_attribute():
    container = make_container()
    dependency = next(
        d for d in container.dependencies if d.attr_name == 'first')
    entrypoint = next(iter(container.entrypoints))

    assert repr(Service.first).startswith('<WithChildren [unbound] at 0x')
    assert repr(dependency).startswith('<WithChildren [service.first] at 0x')
    assert repr(entrypoint).startswith('<Fire [service.method] at 0x')
    assert repr(dependency.nested).startswith('<Nested at 0x')


def test_iter_extensions_yields_children_before_their_parent():
    class Inner(Extension):
        leaf = Nested('leaf')

    class Outer(Extension):
        inner = Inner()

    found = list(iter_extensions(Outer()))
    assert [type(e) for e in found] == [Nested, Inner]


def test_type_predicates():
    assert is_extension(Nested('x')) and not is_extension(object())
    assert is_dependency(WithChildren()) and not is_dependency(Nested('x'))
    assert is_entrypoint(Fire()) and not is_entrypoint(WithChildren())


class Collector(ProviderCollector, SharedExtension):
    pass


def test_provider_collector_stop_returns_at_once_without_providers():
    Collector().stop()  # must not block


def test_provider_collector_stop_waits_for_the_last_provider():
    collector = Collector()
    first, second = object(), object()
    collector.register_provider(first)
    collector.register_provider(second)

    stopped = threading.Event()
    stopper = threading.Thread(
        target=lambda: (collector.stop(), stopped.set()),
        name='test-collector-stop')
    stopper.start()
    try:
        collector.unregister_provider(first)
        collector.unregister_provider(object())  # unknown: ignored
        assert not stopped.wait(0.1)
        collector.unregister_provider(second)
        assert stopped.wait(WAIT)
    finally:
        collector.unregister_provider(second)
        stopper.join(WAIT)
