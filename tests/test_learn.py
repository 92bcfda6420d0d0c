"""Named shipped checkpoints, resolved in one place (:meth:`dsim.learn.LearnableSpec.locate`): for every learned
protocol in the registry, 'shipped' and every 'shipped:<name>' (and alias) is a committed file under
agents/models; an unknown name is a one-line ``ValueError`` naming the protocol, the key and the allowed values,
on every path that reads a checkpoint (inference, training, federated start)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsim import registry
from dsim.learn import LearnableSpec, get_learnable, load_checkpoint, scenario_sampler

MODELS = Path(__file__).resolve().parents[1] / "agents" / "models"
LEARNED = registry.algorithm_names(learnable=True)


def spec_of(name: str) -> LearnableSpec:
    return get_learnable(name, {"checkpoint": "untrained"}).spec


def test_registry_has_the_named_protocols():
    assert {"wcgcn", "engnn", "engnn_ex2", "engnn_ex3", "gcn_wmmse"} <= set(LEARNED)


@pytest.mark.parametrize("name", LEARNED)
def test_every_shipped_reference_is_a_committed_model(name):
    spec = spec_of(name)
    refs = spec.shipped_refs()
    assert refs[0] == "shipped" and len(refs) == len(set(refs))
    assert spec.locate("shipped") == (spec.shipped, spec.recipe)
    for ref in refs:
        path, recipe = spec.locate(ref)
        assert path.is_file(), f"{name}: {ref} -> {path} missing"
        assert path.resolve().parent == MODELS, f"{name}: {ref} -> {path} not under agents/models"
        assert (MODELS.parent.parent / recipe).is_file(), f"{name}: {ref}: recipe {recipe} missing"
    # a path is a path (it need not exist to be located)
    assert spec.locate("runs/x/checkpoint.pt") == (Path("runs/x/checkpoint.pt"), spec.recipe)


#: the files the names meant before the resolution moved into dsim.learn (agents' tables, YAML headers, README)
EXPECTED = {
    "wcgcn": {"shipped": "wcgcn_d2d_pc_K50.pt", "shipped:d2d_pc": "wcgcn_d2d_pc_K50.pt",
              "shipped:d2d_bf": "wcgcn_d2d_bf_K50_Nt2.pt", "shipped:d2d_bf_v1": "wcgcn_d2d_bf_K50_Nt2_v1.pt",
              "shipped:d2d_bf_v2": "wcgcn_d2d_bf_K50_Nt2_v2.pt",
              "shipped:mpgnn_code_bf": "wcgcn_mpgnn_code_bf_K50_Nt2.pt",
              "shipped:mpgnn_code_bf_v1": "wcgcn_mpgnn_code_bf_K50_Nt2_v1.pt",
              "shipped:mpgnn_code_bf_v2": "wcgcn_mpgnn_code_bf_K50_Nt2_v2.pt",
              "shipped:mpgnn_code_bf_v3": "wcgcn_mpgnn_code_bf_K50_Nt2_v3.pt",
              "shipped:mpgnn_code_bf_v4": "wcgcn_mpgnn_code_bf_K50_Nt2_v4.pt",
              **{f"shipped:gauss_K{k}_{s}dB": f"wcgcn_gauss_K{k}_{s}dB.pt" for k in (10, 30, 50) for s in (0, 10)},
              **{f"shipped:gauss_K50_10dB_L{n}": f"wcgcn_gauss_K50_10dB_L{n}.pt" for n in (1, 2)}},
    "engnn": {"shipped": "engnn_ex1_fresh.pt",
              **{f"shipped:ex1_{n}": f"engnn_ex1_{n}.pt" for n in (10, 100, 1000, "fresh", "100_sym")}},
    "engnn_ex2": {"shipped": "engnn_ex2_n10.pt", **{f"shipped:ex2_n{n}": f"engnn_ex2_n{n}.pt" for n in (2, 5, 10)}},
    "engnn_ex3": {"shipped": "engnn_ex3.pt", "shipped:ex3": "engnn_ex3.pt", "shipped:ex3_k2": "engnn_ex3_k2.pt",
                  "shipped:ex3_plain": "engnn_ex3_plain.pt"},
    "gcn_wmmse": {"shipped": "gcn_wmmse_L7.pt", "shipped:dt": "gcn_wmmse_L7_dt.pt", "shipped-dt": "gcn_wmmse_L7_dt.pt",
                  "shipped:L6": "gcn_wmmse_L6.pt", "shipped:L8": "gcn_wmmse_L8.pt",
                  "shipped:L7v1": "gcn_wmmse_L7_v1.pt", "shipped:L7dl": "gcn_wmmse_L7_dl.pt",
                  "shipped:L6dl": "gcn_wmmse_L6_dl.pt", "shipped:L8dl": "gcn_wmmse_L8_dl.pt"},
    "model_gnn": {"shipped": "model_gnn_N32K16.pt",
                  **{f"shipped:N{n}K{k}": f"model_gnn_N{n}K{k}.pt" for n, k in ((8, 4), (32, 16), (64, 16), (64, 32))},
                  **{f"shipped:N{n}K{k}_snr{s}": f"model_gnn_N{n}K{k}_snr{s}.pt"
                     for n, k in ((8, 4), (32, 16), (64, 16), (64, 32)) for s in (0, 20)},
                  "shipped:N32K16_spectral": "model_gnn_N32K16_spectral.pt",
                  "shipped:N32Kvar": "model_gnn_N32Kvar.pt", "shipped:N32Kexp": "model_gnn_N32Kexp.pt"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_names_resolve_to_the_same_files_as_before(name):
    spec = spec_of(name)
    assert set(spec.shipped_refs()) == set(EXPECTED[name])
    for ref, file in EXPECTED[name].items():
        assert spec.locate(ref)[0] == MODELS / file, ref
    if name == "gcn_wmmse":  # the DT model has its own recipe
        assert spec.locate("shipped-dt")[1] == spec.locate("shipped:dt")[1] == "scenarios/train_gcn_wmmse_dt.yaml"
        for n in (6, 8):
            assert spec.locate(f"shipped:L{n}")[1] == f"scenarios/train_gcn_wmmse_L{n}_nodl.yaml"
            assert spec.locate(f"shipped:L{n}dl")[1] == f"scenarios/train_gcn_wmmse_L{n}.yaml"
        assert spec.locate("shipped")[1] == "scenarios/train_gcn_wmmse_L7_nodl.yaml"  # without diagonal loading
        assert spec.locate("shipped:L7dl")[1] == "scenarios/train_gcn_wmmse_L7_ft.yaml"  # the L = 7 model of s8-21
        assert spec.locate("shipped:L7v1")[1] == "scenarios/train_gcn_wmmse.yaml"     # the first one (stages 1-4)
    if name == "model_gnn":  # every T II cell names its own recipe
        assert spec.locate("shipped:N64K16_snr20")[1] == "scenarios/train_model_gnn_N64K16_snr20.yaml"
        assert spec.locate("shipped:N8K4")[1] == "scenarios/train_model_gnn_N8K4.yaml"
    if name == "engnn":  # every Ex1 model names its own recipe
        for n in (10, 100, 1000, "fresh"):
            assert spec.locate(f"shipped:ex1_{n}")[1] == f"scenarios/train_engnn_ex1_{n}.yaml"


@pytest.mark.parametrize("scn,file", [
    ({"layout": "gaussian", "n_pairs": 10, "snr_db": 0}, "wcgcn_gauss_K10_0dB.pt"),
    ({"layout": "gaussian", "n_pairs": 30, "snr_db": 10}, "wcgcn_gauss_K30_10dB.pt"),
    ({"layout": "gaussian", "n_pairs": 20, "snr_db": 10}, "wcgcn_d2d_pc_K50.pt"),  # no model for K = 20
    ({"layout": "gaussian", "n_pairs": 10, "snr_db": 5}, "wcgcn_d2d_pc_K50.pt"),   # nor for 5 dB
    ({"layout": "d2d", "n_pairs": 10}, "wcgcn_d2d_pc_K50.pt"),
    ({"layout": "d2d", "n_pairs": 10, "tx_antennas": 2}, "wcgcn_d2d_bf_K50_Nt2.pt"),
])
def test_wcgcn_shipped_default_is_picked_from_the_scenario(scn, file):
    scn = {"family": "interference"} | scn
    net, _ = scenario_sampler(scn)(1, 1000)
    net.info["scenario_config"] = scn  # as dsim.scenarios.build.scenario_from_config sets it
    spec = spec_of("wcgcn")
    assert spec.locate("shipped", net)[0] == MODELS / file
    assert spec.locate("shipped:d2d_pc", net)[0] == MODELS / "wcgcn_d2d_pc_K50.pt"  # a name is never re-picked
    # and inference loads exactly that file
    module = registry.algorithm("wcgcn").build(spec.options(), net).module
    ref = load_checkpoint(MODELS / file)["model"]
    assert all(torch.equal(module.state_dict()[k].cpu(), v) for k, v in ref.items())


@pytest.mark.parametrize("name", LEARNED)
@pytest.mark.parametrize("ref", ["shipped:nope", "shipped-nope", "shippedx", "shipped:"])
def test_unknown_shipped_name_is_one_line_naming_protocol_key_and_allowed(name, ref):
    spec = spec_of(name)
    with pytest.raises(ValueError) as err:
        spec.locate(ref)
    msg = str(err.value)
    allowed = ", ".join(spec.shipped_refs())
    assert msg == f"{name}: checkpoint {ref!r} is not allowed; allowed: {allowed}, untrained or a path"
    # the same error where training and federated fine-tuning read their start (get_learnable)
    with pytest.raises(ValueError) as err:
        get_learnable(name, {"checkpoint": ref})
    assert str(err.value) == msg


def test_missing_named_file_names_its_recipe(tmp_path):
    spec = spec_of("gcn_wmmse")
    moved = LearnableSpec(spec.name, spec.module, spec.options, spec.protocol, tmp_path / "pt.pt", spec.recipe,
                          named={"dt": tmp_path / "dt.pt"}, aliases={"shipped-dt": "dt"},
                          recipes={"dt": "scenarios/train_gcn_wmmse_dt.yaml"})
    with pytest.raises(FileNotFoundError, match="train_gcn_wmmse_dt.yaml"):
        moved.read("shipped-dt")
    with pytest.raises(FileNotFoundError, match=r"train_gcn_wmmse_L7_nodl\.yaml"):
        moved.read("shipped")


def test_a_spec_with_aliases_of_no_model_is_refused():
    spec = spec_of("gcn_wmmse")
    with pytest.raises(ValueError, match="aliases"):
        LearnableSpec("x", spec.module, spec.options, spec.protocol, spec.shipped, spec.recipe,
                      aliases={"shipped-zz": "zz"})


@pytest.mark.parametrize("name", LEARNED)
def test_config_validation_checks_the_checkpoint_value(name, tmp_path, monkeypatch):
    """The spec's ``check`` hook (:meth:`LearnableSpec.check`) is the registered ``AlgorithmSpec.check``: every
    packaged name, 'untrained' and an existing file pass; an unknown 'shipped...' name and a path with no file
    are one problem at ``checkpoint`` ending with the allowed values, the very words ``locate`` raises."""
    spec, alg = spec_of(name), registry.algorithm(name)
    assert alg.check == spec.check
    allowed = f"allowed: {', '.join(spec.shipped_refs())}, untrained or a path"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.pt").write_bytes(b"")
    for ok in [*spec.shipped_refs(), "untrained", "ck.pt", str(tmp_path / "ck.pt")]:
        assert alg.check(spec.options(checkpoint=ok)) == [], ok
    assert alg.check(spec.options(checkpoint="shipped:nope")) == [
        ("checkpoint", f"'shipped:nope' is not allowed; {allowed}")]
    with pytest.raises(ValueError) as err:
        spec.locate("shipped:nope")
    assert str(err.value) == f"{name}: checkpoint 'shipped:nope' is not allowed; {allowed}"
    [(key, msg)] = alg.check(spec.options(checkpoint="sub/gone.pt"))
    assert key == "checkpoint" and msg == (f"no such checkpoint file 'sub/gone.pt': {tmp_path / 'sub' / 'gone.pt'} "
                                           f"(a relative path is read from the current directory); {allowed}")
    assert alg.check(spec.options(checkpoint="sub/gone.pt"), False) == []  # files not read now: a path is a path
    assert alg.check(spec.options(checkpoint="shipped:nope"), False)[0][1].endswith(allowed)
    (tmp_path / "adir").mkdir()
    assert alg.check(spec.options(checkpoint=str(tmp_path / "adir")))[0][1].startswith("no such checkpoint file")


def test_every_learnable_algorithm_registers_the_check_hook():
    for name in LEARNED:
        assert registry.algorithm(name).check is not None, name
