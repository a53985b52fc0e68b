"""The version ring buffer and the server: only `(gradients, base_version)` goes in; staleness-weighted steps."""

import inspect

import pytest
import torch

from lit_rec.federated import Clients, Server, ServerStep, VersionBuffer
from lit_rec.federated.gradients import write_flat_gradient


def test_ring_buffer_returns_the_right_version_and_forgets_old_ones():
    buffer = VersionBuffer(capacity=3, num_params=2)
    for v in range(5):
        assert buffer.push(torch.full((2,), float(v))) == v
    assert buffer.latest == 4 and buffer.oldest == 2
    for v in (2, 3, 4):
        assert torch.equal(buffer.get(v), torch.full((2,), float(v)))
    assert 1 not in buffer and 5 not in buffer
    with pytest.raises(KeyError, match="version 1"):
        buffer.get(1)


def test_ring_buffer_state_round_trip():
    buffer = VersionBuffer(capacity=2, num_params=3)
    for v in range(3):
        buffer.push(torch.full((3,), float(v)))
    other = VersionBuffer(capacity=2, num_params=3)
    other.load_state_dict(buffer.state_dict())
    assert other.latest == 2 and torch.equal(other.get(1), buffer.get(1))


def _server(weighting: str = "constant", max_staleness: int = 4):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1, 1))]
    server = Server(params, max_staleness=max_staleness, weighting=weighting, weight_a=0.5)
    server.start()
    return server, params, []


def _step(server: Server, params: list, calls: list) -> ServerStep:
    """The module's side of a server step: write the step's gradient, SGD with lr 1 times the multiplier, publish."""
    step = server.step()
    write_flat_gradient(params, step.gradient)
    calls.append((step.lr_scale, [None if p.grad is None else p.grad.clone() for p in params]))
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= step.lr_scale * p.grad
    if step.gradient is not None:
        server.publish()
    return step


def test_the_server_takes_nothing_but_gradients_and_a_base_version():
    public = {name for name, _ in inspect.getmembers(Server, inspect.isfunction) if not name.startswith("_")}
    assert public == {"start", "flat_parameters", "parameters_at", "weights", "receive", "step", "publish", "state_dict", "load_state_dict"}
    assert list(inspect.signature(Server.weights).parameters) == ["self", "staleness"]  # a weight of Δ, never of a client
    # `shares`: a row's weight in the mean (its events); `clients`: how many clients a row averages (counts, never who)
    assert list(inspect.signature(Server.receive).parameters) == ["self", "gradients", "base_version", "shares", "clients"]
    assert list(inspect.signature(Server.step).parameters) == ["self"]
    server, _, _ = _server()
    with pytest.raises(ValueError, match="per row"):
        server.receive(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.zeros(1, 4))  # no private parameters
    with pytest.raises(TypeError):
        server.receive(gradients=torch.zeros(1, 3), base_version=torch.zeros(1, dtype=torch.long), client=torch.tensor([0]))


def test_a_row_averaging_several_clients_counts_as_that_many_updates_with_their_shares():
    """Two clients on one version (events 1 and 3) handed in as one averaged row step exactly as the two rows would."""
    stepped = []
    two_rows = (torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.tensor([1.0, 3.0]), None)
    one_row = (torch.tensor([[2.5, 2.0, 1.5]]), torch.tensor([4.0]), torch.tensor([2]))  # (1 x row 0 + 3 x row 1) / 4
    for rows, shares, clients in (two_rows, one_row):
        server, params, calls = _server(weighting="polynomial")
        for _ in range(2):
            server.receive(torch.zeros(1, 3), torch.tensor([server.version]))
            _step(server, params, calls)
        server.receive(rows, torch.zeros(rows.shape[0], dtype=torch.long), shares, clients)  # staleness 2
        step = _step(server, params, calls)
        stepped.append((step.updates, step.lr_scale, torch.cat([p.detach().reshape(-1) for p in params])))
    (updates_a, scale_a, params_a), (updates_b, scale_b, params_b) = stepped
    assert updates_a == updates_b == 2
    assert scale_a == pytest.approx(scale_b) == pytest.approx(3 ** -0.5)
    assert torch.allclose(params_a, params_b)


def test_staleness_weights_are_relative_weights_and_scale_the_step():
    server, params, calls = _server(weighting="polynomial")
    for _ in range(3):  # versions 1..3 with zero gradients
        server.receive(torch.zeros(1, 3), torch.tensor([server.version]))
        _step(server, params, calls)
    assert server.version == 3
    g_fresh, g_stale = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, -1.0])
    weights = server.receive(torch.stack([g_fresh, g_stale]), torch.tensor([3, 0]))  # staleness 0 and 3
    assert torch.allclose(weights, torch.tensor([1.0, 0.5]))
    update = _step(server, params, calls)
    lr_scale, grads = calls[-1]
    combined = (1.0 * g_fresh + 0.5 * g_stale) / 1.5
    assert update.updates == 2 and lr_scale == pytest.approx(0.75)
    assert torch.allclose(torch.cat([g.reshape(-1) for g in grads]), combined)
    assert server.version == 4
    assert torch.allclose(server.parameters_at(4), -0.75 * combined)
    assert torch.allclose(server.parameters_at(3), torch.zeros(3))


def test_an_empty_cohort_steps_the_optimiser_without_gradients_or_a_new_version():
    server, params, calls = _server()
    update = _step(server, params, calls)
    assert update.updates == 0 and update.gradient is None and server.version == 0
    assert calls[-1][0] == 0.0 and all(g is None for g in calls[-1][1])


def test_versions_outside_the_buffer_are_refused():
    server, params, calls = _server(max_staleness=1)
    for _ in range(3):
        server.receive(torch.zeros(1, 3), torch.tensor([server.version]))
        _step(server, params, calls)
    with pytest.raises(ValueError, match="base versions"):
        server.receive(torch.zeros(1, 3), torch.tensor([0]))


def test_private_parameters_are_never_in_the_server_state():
    offsets = torch.tensor([0, 2, 5, 5])
    clients = Clients(offsets, private_dim=3)
    clients.private.fill_(123.0)
    server, params, calls = _server()
    server.receive(torch.ones(1, 3), torch.tensor([0]))
    _step(server, params, calls)

    def tensors(obj, seen=None):
        seen = set() if seen is None else seen
        if id(obj) in seen:
            return []
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            return [obj]
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else vars(obj).values() if hasattr(obj, "__dict__") else []
        return [t for item in items for t in tensors(item, seen)]

    held = tensors(server) + tensors(server.state_dict())
    assert held and not any((t == 123.0).any() for t in held if t.is_floating_point())
    assert not any(t.untyped_storage().data_ptr() == clients.private.untyped_storage().data_ptr() for t in held)
