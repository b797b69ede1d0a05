"""Tests for shipper.config: loading, ${ENV} expansion, validation and error messages."""

import re
import textwrap
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from shipper.config import (
    DEFAULT_ORIGIN,
    CheckpointConfig,
    Config,
    ConsoleOutputConfig,
    CriSourceConfig,
    DockerJsonSourceConfig,
    ElasticsearchOutputConfig,
    FileOutputConfig,
    FilesSourceConfig,
    SplunkHecOutputConfig,
    load_config,
    parse_config,
)
from shipper.errors import ConfigError, ShipperError

DOCUMENTED = Path(__file__).resolve().parents[2] / "config" / "shipper.yaml"

# Stand-ins for a password and a numeric PIN that reach the config through the environment.
SECRET = "hunter2-s3cret"
SECRET_PIN = "73519046"
SECRET_ENV = {"SHIPPER_TEST_SECRET": SECRET, "SHIPPER_TEST_PIN": SECRET_PIN}

MINIMAL = """
sources:
  docker:
    type: docker_json
outputs:
  archive:
    type: file
    path: /tmp/out.ndjson
"""


def parse(text: str, **environ: str) -> Config:
    return parse_config(textwrap.dedent(text), "config.yaml", environ=environ)


def error_of(text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, **environ)
    return str(caught.value)


# --- the embedded default and its documented mirror -----------------------------------------------


def test_embedded_default_loads() -> None:
    config = load_config(None, environ={})
    assert config.state_dir == Path("/var/lib/shipper")
    assert config.sources == {
        "docker": DockerJsonSourceConfig(
            type="docker_json", root=Path("/var/lib/docker/containers")
        )
    }
    archive = config.outputs["archive"]
    assert isinstance(archive, FileOutputConfig)
    assert archive.path == Path("/var/lib/shipper/logs.ndjson")
    assert archive.inputs is None
    assert config.checkpoint_path == Path("/var/lib/shipper/checkpoints.json")
    assert config.dead_letter_path == Path("/var/lib/shipper/dead-letter.ndjson")


def test_embedded_default_follows_environment() -> None:
    environ = {
        "SHIPPER_STATE_DIR": "/srv/shipper",
        "SHIPPER_DOCKER_ROOT": "/data/docker/containers",
    }
    config = load_config(None, environ=environ)
    assert config.state_dir == Path("/srv/shipper")
    assert config.sources["docker"].root == Path("/data/docker/containers")
    archive = config.outputs["archive"]
    assert isinstance(archive, FileOutputConfig)
    assert archive.path == Path("/srv/shipper/logs.ndjson")
    assert config.checkpoint_path == Path("/srv/shipper/checkpoints.json")


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPPER_STATE_DIR", "/from/os/environ")
    assert load_config(None).state_dir == Path("/from/os/environ")


@pytest.mark.parametrize(
    "environ",
    [{}, {"SHIPPER_STATE_DIR": "/srv/shipper", "SHIPPER_DOCKER_ROOT": "/data/containers"}],
)
def test_documented_config_equals_embedded_default(environ: dict[str, str]) -> None:
    assert load_config(DOCUMENTED, environ=environ) == load_config(None, environ=environ)


def _assert_every_option_present(model: type[BaseModel], raw: dict[str, Any], where: str) -> None:
    missing = set(model.model_fields) - set(raw)
    assert not missing, f"{where}: options not documented: {sorted(missing)}"
    for name, field in model.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            _assert_every_option_present(nested, raw[name], f"{where}.{name}")


def test_documented_config_lists_every_option() -> None:
    raw = yaml.safe_load(DOCUMENTED.read_text(encoding="utf-8"))
    types: dict[str, type[BaseModel]] = {
        "docker_json": DockerJsonSourceConfig,
        "file": FileOutputConfig,
        "console": ConsoleOutputConfig,
    }
    top = {k: v for k, v in raw.items() if k not in ("sources", "outputs")}
    for name in set(Config.model_fields) - {"sources", "outputs"}:
        assert name in top, f"{name} not documented"
        nested = Config.model_fields[name].annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            _assert_every_option_present(nested, top[name], name)
    for section in ("sources", "outputs"):
        for name, entry in raw[section].items():
            _assert_every_option_present(types[entry["type"]], entry, f"{section}.{name}")


EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


@pytest.mark.parametrize(
    ("example", "source_type"),
    [("kubernetes-cri.yaml", CriSourceConfig), ("sidecar.yaml", FilesSourceConfig)],
)
def test_examples_load_and_list_every_option_of_their_source(
    example: str, source_type: type[BaseModel]
) -> None:
    path = EXAMPLES / example
    config = load_config(path, environ={})
    (source,) = config.sources.values()
    assert isinstance(source, source_type)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    (entry,) = raw["sources"].values()
    _assert_every_option_present(source_type, entry, example)


def test_elasticsearch_example_loads_and_lists_every_option_of_its_output() -> None:
    path = EXAMPLES / "elasticsearch.yaml"
    config = load_config(path, environ={})
    (output,) = config.outputs.values()
    assert isinstance(output, ElasticsearchOutputConfig)
    # The defaults it lists are the defaults.
    assert output == ElasticsearchOutputConfig(type="elasticsearch", hosts=output.hosts)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    (entry,) = raw["outputs"].values()
    _assert_every_option_present(ElasticsearchOutputConfig, entry, "elasticsearch.yaml")


def test_splunk_hec_example_loads_and_lists_every_option_of_its_output() -> None:
    path = EXAMPLES / "splunk-hec.yaml"
    config = load_config(path, environ={})
    (output,) = config.outputs.values()
    assert isinstance(output, SplunkHecOutputConfig)
    # The defaults it lists are the defaults.
    assert output == SplunkHecOutputConfig(
        type="splunk_hec", url=output.url, token_file=output.token_file
    )
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    (entry,) = raw["outputs"].values()
    _assert_every_option_present(SplunkHecOutputConfig, entry, "splunk-hec.yaml")


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "shipper.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    config = load_config(path, environ={})
    assert list(config.outputs) == ["archive"]


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(path, environ={})


def test_invalid_utf8_file_names_it_without_chaining(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + f"# {SECRET} \xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: not valid UTF-8")
    assert caught.value.__context__ is None


def test_config_error_is_a_shipper_error() -> None:
    assert issubclass(ConfigError, ShipperError)


# --- defaults and derived paths -------------------------------------------------------------------


def test_defaults() -> None:
    config = parse(MINIMAL)
    source = config.sources["docker"]
    assert source.root == Path("/var/lib/docker/containers")
    assert source.start_at == "beginning"
    assert source.rescan_interval == 10.0
    assert source.watch is True
    assert source.read_chunk_size == 256 * 1024
    assert source.poll_interval == 0.25
    output = config.outputs["archive"]
    assert output.batch.max_records == 2000
    assert output.batch.max_bytes == 5 * 1024 * 1024
    assert output.batch.linger == 0.25
    assert output.max_in_flight == 1
    assert (output.retry.initial_backoff, output.retry.max_backoff) == (0.5, 30.0)
    assert output.retry.max_attempts == 0
    assert config.pipeline.max_buffered_bytes == 16 * 1024 * 1024
    assert config.pipeline.workers == 1
    assert config.pipeline.shutdown_timeout == 10.0
    assert config.checkpoints == CheckpointConfig(path=None, flush_interval=1.0, on_corrupt="fail")
    assert (config.logging.level, config.logging.format) == ("info", "json")


def test_checkpoint_and_dead_letter_paths_default_to_state_dir() -> None:
    config = parse("state_dir: /srv/state\n" + MINIMAL)
    assert config.checkpoint_path == Path("/srv/state/checkpoints.json")
    assert config.dead_letter_path == Path("/srv/state/dead-letter.ndjson")


def test_checkpoint_and_dead_letter_paths_can_be_set() -> None:
    config = parse(
        MINIMAL
        + """
checkpoints:
  path: /elsewhere/cp.json
dead_letter:
  path: /elsewhere/dl.ndjson
"""
    )
    assert config.checkpoint_path == Path("/elsewhere/cp.json")
    assert config.dead_letter_path == Path("/elsewhere/dl.ndjson")


def test_console_output() -> None:
    config = parse(
        """
        sources: {docker: {type: docker_json}}
        outputs:
          screen:
            type: console
            stream: stderr
            inputs: [docker]
        """
    )
    screen = config.outputs["screen"]
    assert isinstance(screen, ConsoleOutputConfig)
    assert screen.stream == "stderr"
    assert screen.inputs == ["docker"]


def test_config_is_frozen() -> None:
    config = parse(MINIMAL)
    with pytest.raises(ValidationError):
        config.state_dir = Path("/elsewhere")


# --- durations and sizes --------------------------------------------------------------------------


def _with_linger(value: str) -> str:
    return MINIMAL + f"    batch:\n      linger: {value}\n"


def _with_max_bytes(value: str) -> str:
    return MINIMAL + f"    batch:\n      max_bytes: {value}\n"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("0.5m", 30.0),
        ("3", 3.0),
        ("'3'", 3.0),
        ("0.1", 0.1),
        ("0", 0.0),
    ],
)
def test_duration_units(written: str, seconds: float) -> None:
    assert parse(_with_linger(written)).outputs["archive"].batch.linger == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("512B", 512),
        ("256KiB", 256 * 1024),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("5MB", 5_000_000),
        ("5mb", 5_000_000),
        ("1.5KiB", 1536),
        ("1024", 1024),
        ("'2048'", 2048),
    ],
)
def test_size_units(written: str, size: int) -> None:
    assert parse(_with_max_bytes(written)).outputs["archive"].batch.max_bytes == size


@pytest.mark.parametrize("written", ["5x", "5 sec", "s", "''", "true", "1.2.3s", "[1]", ".inf"])
def test_bad_duration(written: str) -> None:
    message = error_of(_with_linger(written))
    assert message == (
        "config.yaml: outputs.archive.batch.linger: invalid duration: "
        "expected a number with a unit such as 250ms, 5s, 1m or 2h"
    )


@pytest.mark.parametrize("written", ["-1s", "-5", "-0.5"])
def test_negative_duration(written: str) -> None:
    assert error_of(_with_linger(written)) == (
        "config.yaml: outputs.archive.batch.linger: must not be negative"
    )


@pytest.mark.parametrize("written", ["5XB", "5K", "MiB", "true", "{a: 1}", "1e3"])
def test_bad_size(written: str) -> None:
    assert error_of(_with_max_bytes(written)) == (
        "config.yaml: outputs.archive.batch.max_bytes: invalid size: "
        "expected a number with a unit such as 5MiB"
    )


def test_negative_and_fractional_sizes() -> None:
    assert error_of(_with_max_bytes("-1MiB")).endswith("max_bytes: must not be negative")
    assert error_of(_with_max_bytes("0.5B")).endswith("not a whole number of bytes")


def test_size_and_interval_minimums() -> None:
    message = error_of(
        """
        sources:
          docker: {type: docker_json, read_chunk_size: 1KiB, poll_interval: 0s}
        outputs:
          archive: {type: file, path: /tmp/x}
        pipeline: {max_buffered_bytes: 512KiB}
        """
    )
    assert message.splitlines() == [
        "config.yaml: sources.docker.read_chunk_size: must be at least 4KiB",
        "config.yaml: sources.docker.poll_interval: must be greater than zero",
        "config.yaml: pipeline.max_buffered_bytes: must be at least 1MiB",
    ]


# --- structure errors -----------------------------------------------------------------------------


def test_unknown_nested_key_names_file_and_path() -> None:
    message = error_of(MINIMAL + "    batch:\n      max_recordz: 10\n")
    assert message == "config.yaml: outputs.archive.batch.max_recordz: unknown option"


def test_unknown_top_level_key() -> None:
    assert error_of(MINIMAL + "colour: blue\n") == "config.yaml: colour: unknown option"


def test_every_problem_is_reported_one_per_line() -> None:
    message = error_of(
        """
        sources:
          docker: {type: docker_json, watch: maybe}
        outputs:
          archive: {type: file, max_in_flight: 65}
          other: {type: carrier_pigeon}
        logging: {level: loud}
        """
    )
    assert message.splitlines() == [
        "config.yaml: sources.docker.watch: expected true or false",
        "config.yaml: outputs.archive.max_in_flight: must be less than or equal to 64",
        "config.yaml: outputs.archive.path: missing required option",
        "config.yaml: outputs.other.type: unknown type: expected one of 'file', 'console', "
        "'elasticsearch', 'splunk_hec'",
        "config.yaml: logging.level: expected 'debug', 'info', 'warning' or 'error'",
    ]


def test_missing_type() -> None:
    message = error_of("sources: {docker: {root: /x}}\noutputs: {a: {type: console}}\n")
    assert message == "config.yaml: sources.docker.type: missing required option"


def test_sources_and_outputs_are_required() -> None:
    assert error_of("state_dir: /x\n").splitlines() == [
        "config.yaml: sources: missing required option",
        "config.yaml: outputs: missing required option",
    ]


def test_sources_and_outputs_must_not_be_empty() -> None:
    assert error_of("sources: {}\noutputs: {}\n").splitlines() == [
        "config.yaml: sources: define at least one source",
        "config.yaml: outputs: define at least one output",
    ]


@pytest.mark.parametrize("name", ["Docker", "my source", "a.b", "'x!'", "1"])
def test_bad_names(name: str) -> None:
    message = error_of(
        f"sources: {{{name}: {{type: docker_json}}}}\noutputs: {{a: {{type: console}}}}"
    )
    assert "invalid name: use only lowercase letters, digits, '_' and '-'" in message


def test_zero_backoff_and_batch_size_rejected() -> None:
    message = error_of(MINIMAL + "    retry: {initial_backoff: 0s}\n    batch: {max_bytes: 0}\n")
    assert message.splitlines() == [
        "config.yaml: outputs.archive.batch.max_bytes: must be at least 1B",
        "config.yaml: outputs.archive.retry.initial_backoff: must be greater than zero",
    ]


def test_backoff_order() -> None:
    message = error_of(MINIMAL + "    retry: {initial_backoff: 1m, max_backoff: 1s}\n")
    assert message == (
        "config.yaml: outputs.archive.retry: initial_backoff must not be greater than max_backoff"
    )


def test_empty_path_rejected() -> None:
    message = error_of(MINIMAL.replace("/tmp/out.ndjson", "${OUT_DIR:-}"))
    assert message == "config.yaml: outputs.archive.path: must not be empty"


# --- inputs ---------------------------------------------------------------------------------------

TWO_SOURCES = """
sources:
  docker: {type: docker_json}
  other: {type: docker_json, root: /other}
outputs:
  archive:
    type: console
"""


def test_inputs_select_sources() -> None:
    config = parse(TWO_SOURCES + "    inputs: [other]\n")
    assert config.outputs["archive"].inputs == ["other"]


def test_inputs_referencing_unknown_source() -> None:
    message = error_of(TWO_SOURCES + "    inputs: [docker, dokcer]\n")
    assert message == (
        "config.yaml: outputs.archive.inputs[1]: no source of this name (defined: docker, other)"
    )


def test_empty_inputs_rejected() -> None:
    message = error_of(TWO_SOURCES + "    inputs: []\n")
    assert message.startswith("config.yaml: outputs.archive.inputs: name at least one source")


# --- YAML -----------------------------------------------------------------------------------------


def test_duplicate_nested_key_names_line_and_path() -> None:
    message = error_of(
        """\
        sources:
          docker:
            type: docker_json
            root: /a
            root: /b
        outputs: {a: {type: console}}
        """
    )
    assert message == (
        "config.yaml: line 5, column 5: sources.docker.root: "
        "duplicate key (first defined on line 4)"
    )


def test_duplicate_top_level_key() -> None:
    message = error_of(MINIMAL + "sources: {}\n")
    assert message.startswith("config.yaml: line 9, column 1: sources: duplicate key")


def test_duplicate_key_inside_a_list() -> None:
    message = error_of(TWO_SOURCES + "    inputs: [{a: 1, a: 2}]\n")
    assert "outputs.archive.inputs[0].a: duplicate key" in message


def test_anchors_and_merge_keys_still_work() -> None:
    config = parse(
        """
        sources:
          docker: {type: docker_json}
        outputs:
          a: &common {type: file, path: /tmp/a, fsync: true}
          b:
            <<: *common
            path: /tmp/b
        """
    )
    b = config.outputs["b"]
    assert isinstance(b, FileOutputConfig)
    assert (b.path, b.fsync) == (Path("/tmp/b"), True)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(text: str) -> None:
    assert error_of(text) == "config.yaml: the file is empty: expected a mapping of options"


@pytest.mark.parametrize("text", ["- a\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert error_of(text) == "config.yaml: the top level must be a mapping of options"


def test_syntax_error_names_line() -> None:
    message = error_of("sources:\n  docker: {type: docker_json\noutputs: {}\n")
    assert message.startswith("config.yaml: line 3, column")


# --- ${VAR} expansion -----------------------------------------------------------------------------


def test_env_expansion_with_and_without_default() -> None:
    text = """
    state_dir: ${STATE}/shipper
    sources:
      docker: {type: docker_json, root: "${ROOT:-/default/root}"}
    outputs:
      archive: {type: file, path: "${STATE}/${NAME:-logs}.ndjson"}
    """
    config = parse(text, STATE="/srv", NAME="")
    assert config.state_dir == Path("/srv/shipper")
    assert config.sources["docker"].root == Path("/default/root")
    archive = config.outputs["archive"]
    assert isinstance(archive, FileOutputConfig)
    # As in the shell, ":-" also applies to a variable that is set but empty.
    assert archive.path == Path("/srv/logs.ndjson")
    assert parse(text, STATE="/s", ROOT="/r").sources["docker"].root == Path("/r")


def test_env_expansion_in_lists() -> None:
    config = parse(TWO_SOURCES + "    inputs: [docker, '${SECOND}']\n", SECOND="other")
    assert config.outputs["archive"].inputs == ["docker", "other"]


def test_whole_value_reference_is_coerced_after_expansion() -> None:
    config = parse(
        MINIMAL + "    batch: {linger: '${L}', max_records: '${N}', max_bytes: '${B}'}\n"
        "    fsync: ${F}\n",
        L="1.5s",
        N="100",
        B="1MiB",
        F="true",
    )
    archive = config.outputs["archive"]
    assert isinstance(archive, FileOutputConfig)
    assert (archive.batch.linger, archive.batch.max_records) == (1.5, 100)
    assert archive.batch.max_bytes == 1024 * 1024
    assert archive.fsync is True


def test_dollar_dollar_brace_is_a_literal() -> None:
    config = parse(MINIMAL.replace("/tmp/out.ndjson", "/tmp/$${HOME}/$$x/$HOME"), HOME="/root")
    archive = config.outputs["archive"]
    assert isinstance(archive, FileOutputConfig)
    assert archive.path == Path("/tmp/${HOME}/$$x/$HOME")


def test_keys_are_not_expanded() -> None:
    message = error_of(MINIMAL + "${KEY}: 1\n", KEY="state_dir")
    assert message == "config.yaml: ${KEY}: unknown option"


def test_missing_variable_names_path_and_variable() -> None:
    message = error_of(MINIMAL.replace("/tmp/out.ndjson", "${NOT_SET_ANYWHERE}/out"))
    assert message == (
        "config.yaml: outputs.archive.path: environment variable NOT_SET_ANYWHERE is not set"
    )


def test_every_missing_variable_is_reported() -> None:
    message = error_of(
        """
        state_dir: ${A}
        sources: {docker: {type: docker_json, root: "${B}/${C:-ok}"}}
        outputs: {archive: {type: console, inputs: ["${D}"]}}
        """
    )
    assert message.splitlines() == [
        "config.yaml: state_dir: environment variable A is not set",
        "config.yaml: sources.docker.root: environment variable B is not set",
        "config.yaml: outputs.archive.inputs[0]: environment variable D is not set",
    ]


@pytest.mark.parametrize("value", ["${unclosed", "${}", "${1ABC}", "${A-b}", "${A:b}"])
def test_malformed_reference(value: str) -> None:
    message = error_of(MINIMAL.replace("/tmp/out.ndjson", f"'{value}'"))
    assert message.startswith("config.yaml: outputs.archive.path: invalid ${...} reference")


# --- secrets never appear in errors ---------------------------------------------------------------

SECRET_CASES = {
    "int field": MINIMAL + "    max_in_flight: ${SHIPPER_TEST_SECRET}\n",
    "size field": MINIMAL + "    batch: {max_bytes: '${SHIPPER_TEST_SECRET}'}\n",
    "duration field": MINIMAL + "    retry: {max_backoff: '${SHIPPER_TEST_SECRET}'}\n",
    "bool field": MINIMAL + "    fsync: ${SHIPPER_TEST_SECRET}\n",
    "literal field": MINIMAL + "logging: {level: '${SHIPPER_TEST_SECRET}'}\n",
    "numeric secret in literal field": MINIMAL + "logging: {format: '${SHIPPER_TEST_PIN}'}\n",
    "numeric secret in int field": MINIMAL + "    max_in_flight: ${SHIPPER_TEST_PIN}\n",
    "discriminator": MINIMAL + "  other: {type: '${SHIPPER_TEST_SECRET}'}\n",
    "unknown top-level key": MINIMAL + "password: ${SHIPPER_TEST_SECRET}\n",
    "unknown nested key": MINIMAL + "    token: ${SHIPPER_TEST_SECRET}\n",
    "unknown key with list": MINIMAL + "    token: ['${SHIPPER_TEST_SECRET}']\n",
    "list where a path is expected": MINIMAL.replace(
        "/tmp/out.ndjson", "['${SHIPPER_TEST_SECRET}']"
    ),
    "list where a literal is expected": MINIMAL + "logging: {level: ['${SHIPPER_TEST_SECRET}']}\n",
    "int where a literal is expected": MINIMAL + f"logging: {{level: {SECRET_PIN}}}\n",
    "string where a mapping is expected": MINIMAL + "    batch: ${SHIPPER_TEST_SECRET}\n",
    "string where a list is expected": MINIMAL + "    inputs: ${SHIPPER_TEST_SECRET}\n",
    "unknown source name": MINIMAL + "    inputs: ['${SHIPPER_TEST_SECRET}']\n",
    "source name as key": MINIMAL + "pipeline: {'${SHIPPER_TEST_SECRET}': 1}\n",
    "secret as default": MINIMAL + "    max_in_flight: '${UNSET_VAR:-" + SECRET + "}'\n",
    "literal secret in bad YAML": MINIMAL + f'password: "{SECRET}\n',
    "literal secret next to duplicate key": MINIMAL + f"pipeline: {{a: {SECRET}, a: {SECRET}}}\n",
    "literal secret in a wrong type": MINIMAL + f"    max_in_flight: {SECRET}\n",
    "credentials in docker_host": MINIMAL.replace(
        "    type: docker_json\n",
        "    type: docker_json\n    docker_host: 'tcp://u:${SHIPPER_TEST_SECRET}@h'\n",
    ),
    "secret in a regular expression": MINIMAL.replace(
        "    type: docker_json\n",
        "    type: docker_json\n"
        "    processors: [{redact: {patterns: ['(${SHIPPER_TEST_SECRET}']}}]\n",
    ),
    "secret as a multiline parser name": MINIMAL.replace(
        "    type: docker_json\n",
        "    type: docker_json\n    multiline: {default: '${SHIPPER_TEST_SECRET}'}\n",
    ),
}


@pytest.mark.parametrize("text", SECRET_CASES.values(), ids=SECRET_CASES.keys())
def test_secret_values_are_never_echoed(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml", environ=SECRET_ENV)
    rendered = "".join(traceback.format_exception(caught.value))
    # Not even chained: some of pydantic's and PyYAML's own messages quote the input.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    for secret in (SECRET, SECRET_PIN):
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
        assert secret not in rendered
    # The message still says where the problem is.
    assert str(caught.value).startswith("config.yaml: ")


@pytest.mark.parametrize(
    ("case", "where"),
    [
        ("credentials in docker_host", "sources.docker.docker_host: "),
        ("secret in a regular expression", "sources.docker.processors[0].redact.patterns[0]: "),
        ("secret as a multiline parser name", "sources.docker.multiline: "),
    ],
)
def test_secret_cases_fail_where_they_should(case: str, where: str) -> None:
    # So that the secret test above is not passing on a YAML error instead.
    with pytest.raises(ConfigError, match=re.escape("config.yaml: " + where)):
        parse_config(SECRET_CASES[case], "config.yaml", environ=SECRET_ENV)


def test_secret_in_default_origin_name() -> None:
    # The origin string is what errors start with; the embedded default has its own name.
    with pytest.raises(ConfigError, match=f"^{DEFAULT_ORIGIN}: "):
        parse_config("sources: 1\n", DEFAULT_ORIGIN, environ={})


# --- multiline, processors, docker_host ----------------------------------------------------------


def _docker_source(options: str) -> str:
    """MINIMAL with `options` (one line of YAML) added to the docker source."""
    return MINIMAL.replace("    type: docker_json\n", f"    type: docker_json\n    {options}\n")


def test_multiline_names_must_be_known_and_presets_cannot_be_redefined() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            _docker_source(
                "multiline: {default: jvm, parsers: {java: {start: '^x'}},"
                " rules: [{match: {names: [a]}, parser: nope}]}"
            ),
            "c.yaml",
        )
    message = str(caught.value)
    assert "sources.docker.multiline" in message
    assert "parsers.java: a built-in parser has this name" in message
    assert "default: no parser of this name" in message
    assert "rules[0].parser: no parser of this name" in message


def test_custom_multiline_parser_needs_a_pattern_and_a_valid_one() -> None:
    with pytest.raises(ConfigError, match=r"parsers\.app.*give `start`, `continue` or both"):
        parse_config(_docker_source("multiline: {parsers: {app: {}}}"), "c.yaml")
    with pytest.raises(ConfigError, match=r"parsers\.app\.start: invalid regular expression"):
        parse_config(_docker_source("multiline: {parsers: {app: {start: '(x'}}}"), "c.yaml")
    config = parse_config(
        _docker_source("multiline: {default: app, parsers: {app: {continue: '^\\s'}}}"), "c.yaml"
    )
    source = config.sources["docker"]
    assert isinstance(source, DockerJsonSourceConfig)
    assert source.multiline.parsers["app"].continue_ is not None


def test_a_processor_is_exactly_one_step() -> None:
    with pytest.raises(ConfigError, match=r"processors\[0\]: a processor is exactly one of"):
        parse_config(
            _docker_source("processors: [{decode_json: {}, log_level: {field: level}}]"), "c.yaml"
        )
    config = parse_config(
        _docker_source("processors: [{decode_json: {}}, {log_level: {field: level}}]"), "c.yaml"
    )
    source = config.sources["docker"]
    assert isinstance(source, DockerJsonSourceConfig)
    assert [type(p.step).__name__ for p in source.processors] == [
        "DecodeJsonConfig",
        "LogLevelConfig",
    ]


def test_regex_parser_needs_named_groups() -> None:
    with pytest.raises(ConfigError, match="no named group"):
        parse_config(_docker_source("processors: [{regex: {pattern: '(a)(b)'}}]"), "c.yaml")


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:2375", "docker.sock", "unix://relative"])
def test_docker_host_must_be_a_local_unix_socket(value: str) -> None:
    with pytest.raises(ConfigError, match=r"sources\.docker\.docker_host: only a local unix"):
        parse_config(_docker_source(f"docker_host: '{value}'"), "c.yaml")


def _files_source(options: str) -> str:
    return (
        "sources:\n  app:\n    type: files\n    paths: [/logs/*.log]\n"
        f"    {options}\noutputs:\n  o:\n    type: console\n"
    )


@pytest.mark.parametrize("field", ["message", "@timestamp", "log.offset", "stream", "agent.name"])
def test_files_fields_cannot_name_what_each_record_has(field: str) -> None:
    with pytest.raises(ConfigError, match=r"sources\.app: fields: `.*` is written by shipper"):
        parse_config(_files_source(f"fields: {{'{field}': x}}"), "c.yaml")


def test_files_fields_may_carry_container_and_kubernetes_metadata() -> None:
    config = parse_config(
        _files_source("fields: {kubernetes.pod.name: web-0, container.name: app, host.name: n1}"),
        "c.yaml",
    )
    source = config.sources["app"]
    assert isinstance(source, FilesSourceConfig)
    assert source.fields["kubernetes.pod.name"] == "web-0"
