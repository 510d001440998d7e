"""Config and dataset spec: the bounded YAML loader, a bound on every size, finite numbers,
``generation.params`` checked before any run, one line naming the key. No Prefect, no models."""

from __future__ import annotations

import dataclasses

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from counterfactual_lab.config.audit_config import AuditConfig, GenerationSection
from counterfactual_lab.errors import ConfigError, UnsafeModelError, UserError
from counterfactual_lab.config.methods import check_method_params
from counterfactual_lab.models.safety import check_model_reference
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.config.yaml_files import MAX_YAML_BYTES, MAX_YAML_NODES, load_yaml_file

REPO = Path(__file__).resolve().parents[2]

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
dataset: {uri: ./data}
"""


def write(tmp_path: Path, text: str, name: str = "audit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# ---- the YAML loader ----


def test_nested_aliases_are_refused_at_once_for_configs_and_specs(tmp_path):
    for what, load in (("config", AuditConfig.from_yaml), ("dataset spec", DatasetSpec.from_yaml)):
        path = write(tmp_path, BILLION_LAUGHS)
        started = time.perf_counter()
        with pytest.raises(ConfigError) as exc:
            load(path)
        assert time.perf_counter() - started < 2.0
        assert f"{what} {path} expands to more than {MAX_YAML_NODES} values" in one_line(exc)


def test_a_recursive_alias_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"line 1: a recursive alias"):
        load_yaml_file(write(tmp_path, "a: &loop [1, *loop]\n"), "config")


def test_aliases_within_the_bound_are_fine(tmp_path):
    text = "clip: &clip ./models/clip\njudge: {model: *clip}\naudit: {model: *clip}\ndataset: {uri: ./d}\n"
    raw = load_yaml_file(write(tmp_path, text), "config")
    assert raw["judge"]["model"] == raw["audit"]["model"] == "./models/clip"


def test_a_file_over_the_size_cap_is_refused_before_parsing(tmp_path):
    path = write(tmp_path, "# padding\n" * (MAX_YAML_BYTES // 10 + 10))
    with pytest.raises(ConfigError, match=r"is larger than 1024 KiB"):
        AuditConfig.from_yaml(path)


def test_a_syntax_error_names_the_line_and_column(tmp_path):
    path = write(tmp_path, "dataset: {uri: ./d}\ngeneration:\n  steps: 4\n  seed: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        AuditConfig.from_yaml(path)
    message = one_line(exc)
    assert message.startswith(f"config {path} is not valid YAML: line 5, column 1:"), message


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path, "dataset: {uri: ./d}\ngeneration:\n  steps: 4\n  steps: 40\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'steps' appears twice in one mapping \(first on line 3\)"):
        AuditConfig.from_yaml(path)


def test_tags_cannot_build_python_objects(tmp_path):
    path = write(tmp_path, "dataset: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AuditConfig.from_yaml(path)


def test_a_fifo_is_not_read(tmp_path):
    fifo = tmp_path / "audit.yaml"
    import os

    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"is a FIFO \(named pipe\), not a regular file"):
        AuditConfig.from_yaml(fifo)


# ---- bounds: one line naming the key ----

BAD_CONFIGS = [
    ("generation: {resolution: 1000000}", "generation.resolution: Input should be less than or equal to 2048"),
    ("generation: {guidance_scale: .inf}", "generation.guidance_scale: Input should be a finite number"),
    ("generation: {steps: 100000}", "generation.steps: Input should be less than or equal to 1000"),
    ("generation: {seeds_per_target: 1000}", "generation.seeds_per_target: Input should be less than or equal to 64"),
    ("generation: {batch_size: 100000}", "generation.batch_size: Input should be less than or equal to 1024"),
    ("generation: {seed: 99999999999}", "generation.seed: Input should be less than or equal to 2147483647"),
    ("generation: {params: {strength: .nan}}", "generation.params.strength: nan is not a finite number"),
    ("judge: {thresholds: {text: .nan}}", "judge.thresholds.text: Input should be a finite number"),
    ("judge: {thresholds: {image: 2}}", "judge.thresholds.image: Input should be less than or equal to 1"),
    ("audit: {labels: []}", "audit.labels: List should have at least 2 items"),
    ("audit: {labels: [doctor]}", "audit.labels: List should have at least 2 items"),
    ("audit: {labels: [doctor, doctor]}", "audit.labels: 'doctor' is listed twice"),
    ("audit: {bootstrap_samples: 1.0e+9}", "audit.bootstrap_samples: Input should be less than or equal to 100000"),
    ("audit: {top_k: 1000000}", "audit.top_k: Input should be less than or equal to 10000"),
    ("audit: {confidence: .nan}", "audit.confidence: Input should be a finite number"),
    ("audit: {prompt: 'a photo of a {lable}'}", "audit.prompt: 'a photo of a {lable}' must contain {label}"),
    ("runtime: {max_workers: 100000}", "runtime.max_workers: Input should be less than or equal to 256"),
    ("runtime: {max_invalid_fraction: .nan}", "runtime.max_invalid_fraction: Input should be a finite number"),
    ("runtime: {ingest_batch_rows: 10000000}", "runtime.ingest_batch_rows: Input should be less than or equal to 65536"),
    ("runtime: {retry_delay_seconds: .inf}", "runtime.retry_delay_seconds: Input should be a finite number"),
    ("attributes: {}", "attributes: Dictionary should have at least 1 item"),
    ("audit: {skew_protocol: sc}", "audit.skew_protocol: Input should be 'geyik' or 'socialcounterfactuals'"),
    ("audit: {skew_protocol: socialcounterfactuals, queries: ['a photo of a person']}",
     "audit: queries[0] 'a photo of a person' names none of labels (doctor, nurse): skew_protocol socialcounterfactuals"),
    ("audit: {skew_protocol: socialcounterfactuals, queries: ['a doctor beside a nurse']}",
     "audit: queries[0] 'a doctor beside a nurse' names several labels (doctor, nurse)"),
    ("generation: {stepz: 4}", "generation.stepz: unknown key (did you mean 'steps'?); known keys here: method, model,"),
]


@pytest.mark.parametrize("section, expected", BAD_CONFIGS, ids=[e.split(":")[0] for _, e in BAD_CONFIGS])
def test_a_value_out_of_bounds_is_one_line_naming_the_key(tmp_path, section, expected):
    path = write(tmp_path, f"dataset: {{uri: ./d}}\n{section}\n")
    with pytest.raises(ConfigError) as exc:
        AuditConfig.from_yaml(path)
    assert one_line(exc).startswith(f"config {path} is invalid: {expected}"), str(exc.value)


def test_queries_and_labels_counts_are_capped(tmp_path):
    many = [f"a photo of thing {i}" for i in range(1001)]
    for key in ("labels", "queries"):
        with pytest.raises(ConfigError, match=rf"audit.{key}: List should have at most 1000 items"):
            AuditConfig.parse_config({"dataset": {"uri": "./d"}, "audit": {key: many}})


BAD_SPECS = [
    ("limits: {max_pixels: 1000000000000}", "limits.max_pixels: Input should be less than or equal to 178956970"),
    ("limits: {max_image_bytes: 10000000000}", "limits.max_image_bytes: Input should be less than or equal to 1073741824"),
    ("limits: {caption_min_chars: 50, caption_max_chars: 10}", "limits: caption_min_chars (50) cannot exceed caption_max_chars (10)"),
    ("vocabularies: {gender: []}", "vocabularies.gender: List should have at least 1 item"),
    ("storage_options_secret: 'Not A Block Name'", "storage_options_secret: String should match pattern"),
    ("columns: {caption: ''}", "columns.caption: String should have at least 1 character"),
]


@pytest.mark.parametrize("line, expected", BAD_SPECS, ids=[e.split(":")[0] for _, e in BAD_SPECS])
def test_a_spec_out_of_bounds_is_one_line_naming_the_key(tmp_path, line, expected):
    path = write(tmp_path, f"uri: ./d\n{line}\n", "spec.yaml")
    with pytest.raises(ConfigError) as exc:
        DatasetSpec.from_yaml(path)
    assert one_line(exc).startswith(f"dataset spec {path} is invalid: {expected}"), str(exc.value)


def test_the_defaults_and_the_shipped_configs_pass():
    AuditConfig.from_yaml(REPO / "configs" / "audit.yaml")
    for spec in (REPO / "datasets").glob("*.yaml"):
        DatasetSpec.from_yaml(spec)


# ---- generation.params, before any run ----


def test_a_params_typo_gets_the_nearest_name():
    with pytest.raises(UserError, match=r"generation.params.strenght is not understood by method 'img2img' "
                                        r"\(did you mean 'strength'\?\); it accepts \['eta', 'negative_prompt', 'strength'\]"):
        check_method_params(GenerationSection(params={"strenght": 0.5}))


def test_a_pipeline_argument_set_by_another_key_says_which():
    with pytest.raises(UserError, match="generation.params.num_inference_steps is not a method parameter: it is set by generation.steps"):
        check_method_params(GenerationSection(params={"num_inference_steps": 3}))


@pytest.mark.parametrize("generation, expected", [
    ({"steps": 1}, r"generation.steps 1 with params.strength 0.6 runs int\(steps × strength\) = 0 denoising steps"),
    ({"steps": 3, "params": {"strength": 0.3}}, r"use steps ≥ 4 or a larger strength"),
    ({"params": {"strength": 0}}, r"generation.params.strength must be in \(0, 1\], got 0"),
    ({"params": {"eta": 2.0}}, r"generation.params.eta must be in \[0, 1\], got 2.0"),
    ({"method": "instruct-pix2pix", "params": {"image_guidance_scale": 1e6}}, r"image_guidance_scale must be in \[0, 100\]"),
    ({"method": "ledits", "steps": 4, "params": {"edit_warmup_steps": 4}}, r"edit_warmup_steps must be a whole number in \[0, steps=4\)"),
    ({"method": "ledits", "params": {"skip": 1.0}}, r"generation.params.skip must be in \[0, 1\)"),
    ({"method": "ledits", "resolution": 48}, r"generation.resolution 48 must be a multiple of 32"),
])
def test_configs_that_cannot_make_an_image_are_refused(generation, expected):
    with pytest.raises(UserError, match=expected):
        check_method_params(GenerationSection(**generation))


def test_valid_params_come_back_with_defaults():
    assert check_method_params(GenerationSection(steps=2, params={"strength": 0.5})) == {
        "strength": 0.5, "negative_prompt": None, "eta": 0.0,
    }


def test_the_params_check_needs_no_torch():
    """The typo path must stay fast: importing torch alone takes seconds on a busy laptop."""
    code = (
        "import sys\n"
        "from counterfactual_lab.config.audit_config import GenerationSection\n"
        "from counterfactual_lab.config.methods import check_method_params\n"
        "try:\n    check_method_params(GenerationSection(params={'strenght': 1}))\n"
        "except Exception as exc:\n    print(type(exc).__name__)\n"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == ["UserError", "False", "False"], out.stderr


def test_params_are_checked_against_the_installed_pipeline_signature(monkeypatch):
    """A name the method table lists but the installed diffusers pipeline does not take is refused
    (a diffusers upgrade that renamed an argument fails here, not in 1,000 generation tasks)."""
    from counterfactual_lab.config import methods as method_params
    from counterfactual_lab.generation.editor import pipeline_call_parameters, validate_generation

    assert {"strength", "eta", "negative_prompt"} <= pipeline_call_parameters("img2img")
    assert "skip" in pipeline_call_parameters("ledits")  # read by LEDITS++'s invert()
    img2img = method_params.METHODS["img2img"]
    monkeypatch.setitem(method_params.METHODS, "img2img",
                        dataclasses.replace(img2img, params={**img2img.params, "strenth_scale": method_params.Param(1.0)}))
    with pytest.raises(UserError, match="generation.params.strenth_scale is not an argument of the installed diffusers pipeline"):
        validate_generation(GenerationSection(params={"strenth_scale": 1.0}))
    assert validate_generation(GenerationSection(params={"strength": 0.5}))["strength"] == 0.5


# ---- model references, before any run ----


def test_a_missing_local_model_folder_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"generation.model: .*nowhere does not exist"):
        check_model_reference("generation.model", str(tmp_path / "nowhere"))
    check_model_reference("audit.model", "openai/clip-vit-base-patch32")  # a hub id: checked at load time


def test_a_model_folder_with_custom_code_is_refused_without_running_it(tmp_path):
    model = tmp_path / "remote-code-model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    marker = tmp_path / "ran"
    (model / "config.json").write_text('{"model_type": "clip", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}')
    with pytest.raises(UnsafeModelError, match=r"needs custom code \(config.json has an auto_map\)"):
        check_model_reference("audit.model", str(model))
    (model / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(UnsafeModelError, match=r"ships Python code \(modeling_evil.py\)"):
        check_model_reference("audit.model", str(model))
    assert not marker.exists()


def test_a_pickle_only_model_folder_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(UnsafeModelError, match="only pickle checkpoints"):
        check_model_reference("judge.model", str(tmp_path))


# ---- README: every bound is documented beside its key ----


def _upper_bound(field) -> float | None:
    for meta in field.metadata:
        for attr in ("le", "lt"):
            value = getattr(meta, attr, None)
            if value is not None:
                return value
    return None


def _bounded_fields():
    from counterfactual_lab.config import audit_config as cfg
    from counterfactual_lab.config.dataset_spec import ValidationLimits

    sections = {
        "generation": cfg.GenerationSection, "judge": cfg.JudgeSection, "audit": cfg.AuditSection,
        "runtime": cfg.RuntimeSection, "limits": ValidationLimits, "thresholds": cfg.JudgeThresholds,
    }
    for section, model in sections.items():
        for name, field in model.model_fields.items():
            bound = _upper_bound(field)
            if bound is not None and bound != 1:  # fractions and cosines: "in [0, 1]" in the text
                yield section, name, bound


@pytest.mark.parametrize("section, key, bound", list(_bounded_fields()))
def test_every_upper_bound_is_in_the_readme_row_of_its_key(section, key, bound):
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|") and f"`{key}`" in line.split("|")[1]]
    assert rows, f"README has no table row for {section}.{key}"
    if not float(bound).is_integer():
        shown = f"{bound:g}"
    else:
        shown = f"{int(bound):,}".replace(",", " ") if bound >= 10_000 else str(int(bound))
    assert any(f"≤ {shown}" in row for row in rows), f"README row of {key} must say '≤ {shown}': {rows}"


def test_the_yaml_bounds_are_in_the_readme():
    readme = (REPO / "README.md").read_text()
    assert f"{MAX_YAML_BYTES // 1024} KiB" in readme and f"{MAX_YAML_NODES:,}".replace(",", " ") in readme


def test_the_demo_config_passes(tmp_path):
    from counterfactual_lab.demo.inputs import demo_config

    raw = demo_config(tmp_path / "d", {"clip": tmp_path / "clip", "img2img": tmp_path / "img2img"}, "./out")
    config = AuditConfig.parse_config(yaml.safe_load(yaml.safe_dump(raw)))
    check_method_params(config.generation)


@pytest.mark.parametrize("audit, expected", [
    ("{phrasings: {'Is it a doctor?': ['x']}}", "audit.phrasings: 'Is it a doctor?' is not a configured prompt"),
    ("{phrasings: {'a photo of a {label}': ['a photo']}}", "audit: 'a photo' must contain {label}"),
    ("{kind: vlm, yes_no: ['Q?'], phrasings: {'Q?': ['R? {who}']}}", "audit: 'R? {who}' uses {who}"),
    ("{kind: vlm, yes_no: ['Q?', 'R?'], phrasings: {'Q?': ['R?']}}", "audit.phrasings: 'R?' is listed twice"),
    ("{kind: vlm, yes_no: ['Q?'], unclear_option: unclear}", "audit: 'Q?' does not offer unclear_option 'unclear'"),
    ("{kind: vlm, yes_no: ['Q? yes, no or unclear'], phrasings: {'Q? yes, no or unclear': ['R?']}, unclear_option: true}",
     "audit: 'R?' does not offer unclear_option 'unclear'"),
    ("{kind: vlm, ratings: ['Rate it'], unclear_option: unclear}", "audit: unclear_option 'unclear' is an answer of the yes/no"),
    ("{kind: vlm, choice_prompt: 'Job: {options}?', unclear_option: doctor}", "audit: unclear_option 'doctor' is already an answer"),
    ("{kind: vlm, choice_prompt: 'Job?', phrasings: {'a photo of a {label}': ['a picture of a {label}']}}",
     "audit: audit.phrasings lists other phrasings of audit.prompt 'a photo of a {label}', which only a contrastive model reads"),
], ids=["unknown-prompt", "label-placeholder", "probe-placeholder", "twice", "not-offered", "phrasing-not-offered",
        "no-question", "a-label", "label-prompt-of-a-vlm"])
def test_phrasings_and_the_unclear_option_are_checked_in_one_line(tmp_path, audit, expected):
    path = write(tmp_path, f"dataset: {{uri: ./d}}\naudit: {audit}\n")
    with pytest.raises(ConfigError) as exc:
        AuditConfig.from_yaml(path)
    assert expected in one_line(exc), one_line(exc)


def test_a_phrasing_may_say_who_is_pictured_like_its_prompt(tmp_path):
    """{person} (audit.modalities) is allowed in a probe and so in its other phrasings, which are then
    asked per person word like any template with it."""
    path = write(tmp_path, "dataset: {uri: ./d}\naudit: {kind: vlm, yes_no: ['Is the {person} a doctor?'], "
                           "phrasings: {'Is the {person} a doctor?': ['Would you say this {person} is a doctor?', 'Q?']}, "
                           "modalities: [image, text]}\n")
    audit = AuditConfig.from_yaml(path).audit
    assert audit.person_templates() == ["Is the {person} a doctor?", "Would you say this {person} is a doctor?"]


def test_the_full_demo_config_passes(tmp_path):
    from counterfactual_lab.demo.inputs import FULL_DEMO_YES_NO, demo_full_config

    models = {name: tmp_path / name for name in ("clip", "img2img", "vlm", "toxicity", "sentiment", "text-embedder")}
    config = AuditConfig.parse_config(yaml.safe_load(yaml.safe_dump(demo_full_config(tmp_path / "d", models, "./out"))))
    assert config.audit.unclear_option == "unclear" and len(config.audit.phrasings_of(FULL_DEMO_YES_NO)) == 2
    assert {"unclear_option", "sentiment_model", "text_embedder"} <= set(config.audit.generative_keys_set())


# ---- prompt templates: only the documented plain placeholders (issue 17) ----

HOSTILE_PLACEHOLDERS = [
    "{label.__class__.__mro__[1].__subclasses__}",  # an attribute walk to Python's object graph
    "{label.nonexistent}", "{label[0]}", "{label!r}", "{label:>999999999}", "{label{x}}", "{}",
]


@pytest.mark.parametrize("placeholder", HOSTILE_PLACEHOLDERS)
@pytest.mark.parametrize("key", ["audit.prompt", "judge.attribute_prompt", "audit.yes_no", "generation.params.templates"])
def test_a_template_with_anything_but_a_plain_placeholder_is_one_line_naming_the_key(key, placeholder):
    name = {"audit.prompt": "label", "judge.attribute_prompt": "value", "audit.yes_no": "image",
            "generation.params.templates": "gender"}[key]
    template = "a photo of a {" + name + "} " + placeholder.replace("label", name)
    section, field = key.split(".", 1)
    if key == "audit.yes_no":
        raw = {"audit": {"kind": "vlm", "model": "m", "yes_no": [template]}}
    elif key == "generation.params.templates":
        raw = {"generation": {"method": "text2image-sets", "params": {"templates": [template]}}}
    else:
        raw = {section: {field: template}}
    raw.setdefault("dataset", {"uri": "d"})
    with pytest.raises(Exception) as info:
        config = AuditConfig.parse_config(raw)
        if key == "generation.params.templates":
            from counterfactual_lab.runs.preflight import check_config

            check_config(config)
    message = str(info.value)
    assert key in message and "\n" not in message, message
    assert "AttributeError" not in message and "<built-in method" not in message


def test_a_plain_template_still_renders():
    config = AuditConfig.parse_config({"dataset": {"uri": "d"}, "audit": {"prompt": "a photo of a {{literal}} {label}"}})
    assert config.audit.prompt.format(label="doctor") == "a photo of a {literal} doctor"
