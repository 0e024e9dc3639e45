"""The spec layer: recipes give the training settings each chapter used before, targets judge cards,
specs refuse inconsistent declarations, and train_model trains any model the one way."""

import pytest
import torch

from attn_course.registry import all_specs, get_spec, train_model
from attn_course.spec import ModelSpec, Recipe, Target
from attn_course.train import TrainConfig

# (model, task, profile) -> the TrainConfig the chapter's own train_* function built before the recipes were one type
EARLIER_CONFIGS = {
    ("ram", "mnist28", "full"): TrainConfig(60_000, 128, 1e-3, 0, 50, 12_000, 2000, 5.0, False),
    ("ram", "cluttered60", "quick"): TrainConfig(1500, 128, 1e-3, 0, 50, 0, 0, 5.0, False),
    ("draw", "mnist", "full"): TrainConfig(17_000, 64, 1e-3, 0, 25, 3400, 1000, 10.0, False),
    ("draw", "mnist-noattn", "quick"): TrainConfig(300, 64, 1e-3, 0, 25, 0, 0, 10.0, False),
    ("sat", "hard", "full"): TrainConfig(10_000, 32, 2e-3, 0, 25, 0, 500, 5.0, False),
    ("sat", "soft", "quick"): TrainConfig(400, 32, 2e-3, 0, 25, 0, 0, 5.0, False),
    ("r2am", "recurrent", "full"): TrainConfig(20_000, 64, 2e-3, 0, 25, 0, 500, 5.0, False),
    ("transformer", "dates", "full"): TrainConfig(2800, 64, 1.0, 0, 25, 0, 500, 1.0, None),
    ("transformer", "copy", "quick"): TrainConfig(250, 64, 1.0, 0, 25, 0, 0, 1.0, None),
    # the whole-image baselines: a cosine over 80,000 steps since issue 18 (before: a constant rate, 20,000 steps)
    ("fc", "mnist28", "full"): TrainConfig(80_000, 128, 1e-3, 0, 50, 16_000, 2000, None, None),
    ("conv", "translated60", "quick"): TrainConfig(1500, 128, 1e-3, 0, 50, 0, 0, None, None),
    ("fc", "cluttered60", "full"): TrainConfig(20_000, 128, 1e-3, 0, 50, 0, 500, None, None),
}


@pytest.mark.parametrize("key", EARLIER_CONFIGS, ids=["-".join(k) for k in EARLIER_CONFIGS])
def test_recipes_give_the_training_settings_of_before(key):
    name, task, profile = key
    recipe = get_spec(name).recipes[task]
    steps = recipe.steps(profile)
    assert recipe.train_config(steps, recipe.batch_size, recipe.lr, 0) == EARLIER_CONFIGS[key]


def test_the_default_optimiser_is_adam_on_a_cosine_to_the_final_rate():
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = Recipe(10, 100, 8, 2e-3).make_optimizer(model, 2e-3, 100)
    assert isinstance(optimizer, torch.optim.Adam) and scheduler.eta_min == 2e-3 / 20 and scheduler.T_max == 100
    _, scheduler = Recipe(10, 100, 8, 1e-3, final_lr=1e-5).make_optimizer(model, 3e-3, 50)
    assert scheduler.eta_min == 1e-5
    assert Recipe(10, 100, 8, 1e-3, schedule="constant").make_optimizer(model, 1e-3, 50)[1] is None
    transformer = get_spec("transformer")
    model = transformer.build(transformer.model_config("dates"))
    optimizer, scheduler = transformer.recipes["dates"].make_optimizer(model, 1.0, 2800)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)


@pytest.mark.parametrize("kwargs, match", [
    (dict(quick_steps=0), "quick_steps"), (dict(batch_size=2.5), "batch_size"), (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(schedule="step"), "schedule"),
])
def test_a_bad_recipe_is_refused_naming_the_field(kwargs, match):
    values = {**dict(quick_steps=10, full_steps=100, batch_size=8, lr=1e-3), **kwargs}
    with pytest.raises(ValueError, match=match):
        Recipe(**values)


def test_a_target_says_what_is_wrong():
    assert Target("error", at_most=0.05).check({"error": 0.04}) is None
    assert "above the target" in Target("error", at_most=0.05).check({"error": 0.06})
    assert "below the target" in Target("bleu4", at_least=90).check({"bleu4": 80.0})
    assert "no metric 'bleu4'" in Target("bleu4", at_least=90).check({"error": 0.1})
    assert Target("bleu4", why="a comparison").check({"bleu4": 1.0}) is None
    assert "below" in Target("accuracy", at_least=0.9).check({"accuracy": float("nan")})


def test_every_spec_is_consistent_and_builds_its_models():
    for spec in all_specs():
        assert spec.default_task in spec.tasks and spec.title
        for task in spec.tasks:
            config = spec.config(task)
            assert isinstance(config, spec.config_class)
            stored = spec.model_config(task)
            assert stored["kind"] == spec.config_kind
            assert isinstance(spec.build(stored), torch.nn.Module)
        with pytest.raises(ValueError, match=f"not {spec.config_kind!r}"):
            spec.build({"kind": "another"})


def test_a_spec_without_a_recipe_for_a_task_is_refused():
    ram = get_spec("ram")
    fields = {f: getattr(ram, f) for f in ram.__dataclass_fields__}
    with pytest.raises(ValueError, match="no recipe for task"):
        ModelSpec(**{**fields, "recipes": {"mnist28": ram.recipes["mnist28"]}})
    with pytest.raises(ValueError, match="targets for unknown task"):
        ModelSpec(**{**fields, "targets": {"mnist99": Target("error")}})


class _TinyData:
    device = torch.device("cpu")

    def test_batches(self):
        yield self.sample(torch.Generator().manual_seed(1), 16)

    def sample(self, generator, batch_size):
        x = torch.randn(batch_size, 1, 28, 28, generator=generator)
        return {"images": x, "labels": (x.mean((1, 2, 3)) > 0).long()}

    def describe(self):
        return "tiny"


def test_train_model_trains_with_the_recipe_and_records_the_model_config(tmp_path):
    model, result, description = train_model("fc", "mnist28", device="cpu", steps=4, batch_size=8, progress=False,
                                             data=_TinyData(), checkpoint_path=tmp_path / "fc.state", lr=1e-2)
    assert result.step == 4 and description == "tiny" and "accuracy" in result.final_metrics
    assert "eval_accuracy" in result.history.state_dict(), "the spec's validation ran"
    state = torch.load(tmp_path / "fc.state", weights_only=True)
    assert state["extra"]["model_config"] == get_spec("fc").model_config("mnist28")
    assert state["config"]["lr"] == 1e-2 and state["config"]["batch_size"] == 8
    again, _, _ = train_model("fc", "mnist28", device="cpu", steps=4, batch_size=8, progress=False,
                              data=_TinyData(), lr=1e-2)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b), "the same seed trains the same weights"


def _bad_training_calls():
    calls = []
    for spec in all_specs():
        task = spec.default_task
        calls += [
            (spec.name, ValueError, f"model '{spec.name}' has no task 'nonsense'; choose one of: {', '.join(spec.tasks)}",
             dict(task="nonsense")),
            (spec.name, ValueError, "steps must be a positive int", dict(task=task, steps=0)),
            (spec.name, ValueError, "batch_size must be a positive int", dict(task=task, batch_size=-1)),
            (spec.name, ValueError, "lr must be a positive number", dict(task=task, lr=float("nan"))),
            (spec.name, TypeError, f"config must be a {spec.config_class.__name__} or None, got dict",
             dict(task=task, config={"T": 2})),
        ]
    return calls


BAD_TRAINING_CALLS = _bad_training_calls()


@pytest.mark.parametrize("name, error, message, options", BAD_TRAINING_CALLS,
                         ids=[f"{c[0]}-{next(iter(c[3].keys() - {'task'}), 'task')}" for c in BAD_TRAINING_CALLS])
def test_bad_training_arguments_are_refused_before_anything_runs(name, error, message, options):
    options = dict(options)
    task = options.pop("task")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_model(name, task, device="cpu", progress=False, **options)
