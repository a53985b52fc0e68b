"""SeqEncoder and heads: shapes, PAD handling, left-padding invariance, causality, gradients, sizes."""

from __future__ import annotations

import pytest
import torch

from lit_rec.networks import (
    ActorCritic,
    ActorHead,
    CausalBlock,
    CriticHead,
    QHead,
    QNetwork,
    SeqEncoder,
    count_parameters,
)

NUM_ITEMS, L, H = 40, 6, 8


def _q_network(dim: int = 16, num_items: int = NUM_ITEMS, hint_dim: int = H) -> QNetwork:
    torch.manual_seed(0)
    return QNetwork(SeqEncoder(num_items, dim=dim, history_len=L, hint_dim=hint_dim), QHead(hint_dim))


def _actor_critic(dim: int = 16) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(SeqEncoder(NUM_ITEMS, dim=dim, history_len=L, hint_dim=H), ActorHead(H), CriticHead(H))


HISTORY = torch.tensor([[0, 0, 0, 3, 4, 5], [0] * L, [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
CANDIDATES = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 40]])


def test_shapes_and_finite_on_all_pad_histories() -> None:
    q_net, ac = _q_network().eval(), _actor_critic().eval()
    q, hint = q_net(HISTORY, CANDIDATES)
    assert q.shape == (4, 3) and hint.shape == (4, H)
    logits, value = ac(HISTORY, CANDIDATES)
    assert logits.shape == (4, 3) and value.shape == (4,)
    all_pad = torch.zeros(3, L, dtype=torch.long)
    for out in (q_net.score(all_pad, CANDIDATES[:3]), q_net.score_all(all_pad), ac(all_pad, CANDIDATES[:3])[1], ac.score_all(all_pad)):
        assert torch.isfinite(out).all()
    assert q_net.score_all(HISTORY).shape == (4, NUM_ITEMS + 1)
    # in training mode (dropout on) too
    assert torch.isfinite(q_net.train()(all_pad, CANDIDATES[:3])[0]).all()


def test_score_all_matches_score_on_the_same_items() -> None:
    for net in (_q_network().eval(), _actor_critic().eval()):
        assert torch.allclose(net.score_all(HISTORY).gather(1, CANDIDATES), net.score(HISTORY, CANDIDATES), atol=1e-5)
    # many candidates take the project-the-catalogue path: same numbers
    net = _q_network().eval()
    many = torch.randint(1, NUM_ITEMS + 1, (4, 30))
    assert torch.allclose(net.score(HISTORY, many), net.score_all(HISTORY).gather(1, many), atol=1e-5)


def test_state_depends_only_on_non_pad_items() -> None:
    encoder = _q_network().encoder.eval()
    items = torch.tensor([[3, 4, 5], [9, 1, 2]])
    padded = torch.cat([torch.zeros(2, L - 3, dtype=torch.long), items], dim=1)
    assert torch.allclose(encoder(items), encoder(padded), atol=1e-5)
    assert torch.allclose(encoder(items[:, -1:]), encoder(padded[:, -1:]), atol=1e-5)
    # every fully-PAD history, whatever its length, is the same "empty" state
    assert torch.allclose(encoder(torch.zeros(1, 2, dtype=torch.long)), encoder(torch.zeros(1, L, dtype=torch.long)), atol=1e-6)
    # and a real item changes it
    assert not torch.allclose(encoder(items), encoder(torch.tensor([[3, 4, 6], [9, 1, 3]])))


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    block = CausalBlock(dim=16, num_heads=2, dropout=0.0).eval()
    x = torch.randn(2, L, 16)
    allowed = torch.ones(L, L, dtype=torch.bool).tril().expand(2, 1, L, L)
    changed = x.clone()
    changed[:, 3:] += torch.randn(2, L - 3, 16)
    before, after = block(x, allowed), block(changed, allowed)
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_gradients_reach_every_parameter() -> None:
    for net, outputs in (
        (_q_network(), lambda n: n(HISTORY, CANDIDATES)),
        (_actor_critic(), lambda n: n(HISTORY, CANDIDATES)),
    ):
        first, second = outputs(net.train())
        (first.square().mean() + second.square().mean()).backward()
        no_grad = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        assert no_grad == [], no_grad


def test_item_embeddings_start_small_and_pad_is_zero() -> None:
    torch.manual_seed(0)
    encoder = SeqEncoder(2000, dim=64)
    weight = encoder.item_embedding.weight
    assert torch.equal(weight[0], torch.zeros(64))
    assert weight[1:].std().item() == pytest.approx(0.1, rel=0.05)


def test_student_is_at_most_half_of_teacher() -> None:
    # ML-100K-sized catalogue, hint_dim 32: the student differs only in dim
    teacher, student = _q_network(dim=64, num_items=1682, hint_dim=32), _q_network(dim=32, num_items=1682, hint_dim=32)
    ratio = count_parameters(student) / count_parameters(teacher)
    assert ratio <= 0.497, ratio


def test_boundary_shapes_are_checked() -> None:
    net = _q_network()
    with pytest.raises(AssertionError, match=r"history must be \(B, L\)"):
        net.encoder(torch.tensor([1, 2, 3]))
    with pytest.raises(AssertionError, match="must be in 1..history_len"):
        net.encoder(torch.ones(2, L + 1, dtype=torch.long))
    with pytest.raises(AssertionError, match="integer item ids"):
        net.encoder(torch.ones(2, L))
    with pytest.raises(AssertionError, match="candidates has 3 rows but history has 4"):
        net(HISTORY, CANDIDATES[:3])


def test_torchscript_matches_eager() -> None:
    for net in (_q_network().eval(), _actor_critic().eval()):
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted.score(HISTORY, CANDIDATES), net.score(HISTORY, CANDIDATES), atol=1e-6)
        assert torch.allclose(scripted.score_all(HISTORY[:, 2:]), net.score_all(HISTORY[:, 2:]), atol=1e-6)
