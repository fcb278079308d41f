"""What a newcomer meets first: the descriptor's name, reflection v1 and v1alpha, the CLI's
version and address variable, the README's own examples, a quiet stdout, plain lists in process."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.errors import InvalidRequest
from engine.policy_loader import _constraint_tags
from engine.types import Attribute, Candidates
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import REFLECTION_V1_SERVICE
from server.cli import ADDRESS_ENV, main

from tests.conftest import REPO

TIMEOUT_S = 30.0
README = (REPO / "README.md").read_text(encoding="utf-8")
PROTO = (REPO / "proto" / "reranker" / "v1" / "reranker.proto").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def channel(live_server):
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


def test_the_descriptor_is_registered_under_its_source_name_not_the_build_path():
    assert pb.DESCRIPTOR.name == "reranker/v1/reranker.proto"
    assert pb.DESCRIPTOR.package == "reranker.v1"


def _reflect(channel, service: str, *requests):
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=TIMEOUT_S))


@pytest.mark.parametrize("service", ["grpc.reflection.v1alpha.ServerReflection", REFLECTION_V1_SERVICE])
def test_reflection_v1_and_v1alpha_list_services_and_describe_the_api(channel, service):
    listed, described = _reflect(
        channel, service,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="reranker.v1.Reranker"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"reranker.v1.Reranker", "grpc.health.v1.Health", REFLECTION_V1_SERVICE,
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in described.file_descriptor_response.file_descriptor_proto]
    assert "reranker/v1/reranker.proto" in {f.name for f in files}
    # the v1alpha stub (what older clients use) still works too
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (again,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                         timeout=TIMEOUT_S)
    assert {s.name for s in again.list_services_response.service} == names


def test_a_reflection_v1_client_with_v1_messages_can_describe_the_api_and_v1_itself(channel):
    """A client built on grpc.reflection.v1 messages (as grpcurl's are), not the v1alpha ones."""
    from google.protobuf import descriptor_pb2

    from google.protobuf import descriptor_pool

    from server.reflection_v1 import FILE_NAME, message_classes

    descriptor_pool.Default().FindFileByName(FILE_NAME)  # create_server registered it, not this test
    Request, Response = message_classes()
    assert Request.DESCRIPTOR.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    call = channel.stream_stream(f"/{REFLECTION_V1_SERVICE}/ServerReflectionInfo",
                                 request_serializer=Request.SerializeToString,
                                 response_deserializer=Response.FromString)
    api, v1, missing = call(iter([Request(file_containing_symbol="reranker.v1.RerankRequest"),
                                  Request(file_containing_symbol=REFLECTION_V1_SERVICE),
                                  Request(file_containing_symbol="no.such.Symbol")]), timeout=TIMEOUT_S)
    names = [descriptor_pb2.FileDescriptorProto.FromString(b).name
             for b in api.file_descriptor_response.file_descriptor_proto]
    assert names[0] == "reranker/v1/reranker.proto"
    (v1_file,) = [descriptor_pb2.FileDescriptorProto.FromString(b)
                  for b in v1.file_descriptor_response.file_descriptor_proto]
    assert v1_file.name == FILE_NAME and v1_file.package == "grpc.reflection.v1"
    assert [m.input_type for m in v1_file.service[0].method] == [".grpc.reflection.v1.ServerReflectionRequest"]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_version_flag_prints_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"reranker {version('slate-reranker')}"


def test_clients_read_the_address_from_the_environment(capsys, monkeypatch, live_server):
    monkeypatch.setenv(ADDRESS_ENV, live_server.address)
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "home_feed" in out and live_server.address in out
    # --address still wins over the variable
    monkeypatch.setenv(ADDRESS_ENV, "127.0.0.1:1")
    assert main(["policies", "--address", live_server.address, "--timeout", "10"]) == 0
    capsys.readouterr()
    assert main(["policies", "--timeout", "2"]) == 1  # nobody listens on port 1
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_workers_help_names_no_internal_symbol(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "DEFAULT_MAX_WORKERS" not in out and "server.app" not in out
    assert "handler threads per process" in out


def _readme_block(after: str, fence: str) -> str:
    start = README.index(after)
    m = re.compile(rf"```{fence}\n(.*?)```", re.S).search(README, start)
    assert m, f"no ```{fence} block after {after!r} in the README"
    return m.group(1)


def test_the_readme_grpcurl_request_is_proto3_json_the_server_answers(live_server):
    block = _readme_block("in the proto3 JSON", "sh")
    body = block[block.index("<<'JSON'\n") + len("<<'JSON'\n"): block.rindex("JSON")]
    request = json_format.Parse(body, pb.RerankRequest())  # strict: unknown keys fail
    assert request.policy == "home_feed" and len(request.candidates.item_ids) == 3
    with grpc.insecure_channel(live_server.address) as ch:
        resp = pb_grpc.RerankerStub(ch).Rerank(request, timeout=TIMEOUT_S)
    assert [i.item_id for i in resp.items] and len(resp.diagnostics.constraints) > 0


def test_the_example_files_are_one_request_in_both_spellings_and_up_to_date(tmp_path):
    """examples/request_home_feed.proto3.json (for grpcurl) parses strictly as proto3 JSON into the
    same request as the CLI's shorthand file, and both are what examples/make_request.py writes."""
    from server.request_json import load_request

    examples = REPO / "examples"
    proto3 = (examples / "request_home_feed.proto3.json").read_text(encoding="utf-8")
    request = json_format.Parse(proto3, pb.RerankRequest())  # strict: unknown keys fail
    assert request == load_request(examples / "request_home_feed.json")
    assert request.policy == "home_feed" and request.slate_size == 10 and len(request.candidates.item_ids) == 50
    out = tmp_path / "request_home_feed.json"
    subprocess.run([sys.executable, str(examples / "make_request.py"), "--output", str(out)], check=True,
                   cwd=REPO, timeout=60)
    assert out.read_text(encoding="utf-8") == (examples / "request_home_feed.json").read_text(encoding="utf-8")
    assert (tmp_path / "request_home_feed.proto3.json").read_text(encoding="utf-8") == proto3


def test_the_readme_in_process_example_runs_as_written(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = _readme_block("In Python, in process", "python")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"\['sku-\d', 'sku-\d', 'sku-\d'\] (feasible|optimal|relaxed) ", out[0])
    assert len(out) > 1  # one line per rule


def test_plain_lists_become_columns_and_bad_ones_name_the_field():
    c = Candidates(item_ids=["a", "b"], scores={"p": [0.1, 0.2]}, numeric={"price": (1, 2)},
                   attributes={"cat": ["x", "y"], "seller": Attribute.from_values(["s", "s"])},
                   embeddings=[[1.0, 0.0], [0.0, 1.0]])
    assert c.scores["p"].dtype == np.float64 and c.numeric["price"].tolist() == [1.0, 2.0]
    assert c.attributes["cat"].values() == ["x", "y"] and c.attributes["seller"].dictionary == ("s",)
    assert c.embeddings.dtype == np.float32 and c.embeddings.shape == (2, 2)
    arr = np.array([0.3, 0.4])
    assert Candidates(item_ids=["a", "b"], scores={"p": arr}).scores["p"] is arr  # no copy
    cases = [
        (dict(scores={"p": ["x", "y"]}), "candidates.scores['p'].values: must be a sequence of numbers"),
        (dict(scores={"p": "0.1"}), "candidates.scores['p'].values: must be a sequence of numbers, got a str"),
        (dict(numeric={"price": [[1], [2]]}), "candidates.numeric['price'].values: must be one number per item_id"),
        (dict(attributes={"cat": ["x", 3]}), "candidates.attributes['cat'][1]: must be a string, got 3"),
        (dict(attributes={"cat": 7}), "candidates.attributes['cat']: must be an Attribute or a sequence of strings"),
        (dict(embeddings=[1.0, 2.0]), "candidates.embeddings.values: must be a matrix"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidRequest) as exc:
            Candidates(item_ids=["a", "b"], **kwargs)
        assert str(exc.value).startswith(message), (kwargs, str(exc.value))


def test_attributes_from_arrays_iterables_and_hand_built_lists():
    """numpy string arrays and other iterables (a pandas Series, a generator) are columns too; an
    Attribute built by hand with plain lists is made into arrays; bad parts are named."""
    c = Candidates(item_ids=["a", "b", "c"], scores={"p": (x / 10 for x in range(3))},
                   attributes={"cat": np.array(["x", "y", "x"]), "brand": iter(["m", "m", "n"]),
                               "seller": Attribute([1, 0, 1], ["s", "t"])})
    assert c.scores["p"].tolist() == [0.0, 0.1, 0.2]
    assert c.attributes["cat"].values() == ["x", "y", "x"]
    assert all(type(v) is str for v in c.attributes["cat"].dictionary)  # not numpy.str_
    assert c.attributes["brand"].values() == ["m", "m", "n"]
    seller = c.attributes["seller"]
    assert seller.codes.dtype == np.int64 and seller.dictionary == ("s", "t") and seller.values() == ["t", "s", "t"]
    assert Attribute.from_values(["a", "b", "a"]).codes.tolist() == [0, 1, 0]
    cases = [
        (lambda: Attribute.from_values(["a", 3]), "values[1]: must be a string, got 3"),
        (lambda: Attribute.from_values(["a", ["x"]]), "values[1]: must be a string, got ['x']"),
        (lambda: Attribute.from_values("abc"), "values: must be a sequence of strings, got str"),
        (lambda: Attribute.from_values({"a", "b"}), "values: must be a sequence of strings, got set"),
        (lambda: Candidates(item_ids=["a", "b"], attributes={"cat": Attribute([0.5, 1], ["x", "y"])}),
         "candidates.attributes['cat'].codes: must be a flat sequence of integers (one per item_id), "
         "got dtype float64"),
        (lambda: Candidates(item_ids=["a", "b"], attributes={"cat": Attribute([0, 1], ["x", 2])}),
         "candidates.attributes['cat'].dictionary[1]: must be a string, got 2"),
        (lambda: Candidates(item_ids=["a", "b"], scores={"p": 0.5}),
         "candidates.scores['p'].values: must be a sequence of numbers, got float"),
    ]
    for make, message in cases:
        with pytest.raises(InvalidRequest) as exc:
            make()
        assert str(exc.value).startswith(message), (message, str(exc.value))


def test_an_exact_solve_prints_nothing_on_stdout():
    """HiGHS prints a banner when its first solver object is made: a process that solves exactly
    without the server's warm-up must still keep stdout clean."""
    code = (
        "import time\n"
        "from engine.portfolio import solve\n"
        "from testing.instances import medium_problem\n"
        "o = solve(medium_problem(0, 60, 10), mode='exact', deadline=time.perf_counter() + 5)\n"
        "assert o.result.solver != 'greedy', o.result.solver\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""


def test_the_proto_lists_every_rule_kind_a_constraint_report_can_have():
    m = re.search(r"message ConstraintReport \{.*?// The rule's `type` in the policy: (.*?)\n\s*string kind",
                  PROTO, re.S)
    assert m, "ConstraintReport.kind comment not found"
    listed = {k.strip() for k in re.sub(r"\s*//\s*", " ", m.group(1)).split("|")}
    assert listed == set(_constraint_tags())
