"""BYTES end to end over HTTP against ``stowplan up`` (the ``served`` fixture): the ``lexicon``
example (a string tensor ``text`` in; ``class_id`` INT64 and ``label`` BYTES out) through
Triton's HTTP client with binary and JSON inputs and outputs and through KServe's REST client,
with non-ASCII UTF-8 and empty strings; every answer equal to a direct ONNX Runtime call and to
the lexicon's own table. Malformed BYTES (a truncated length prefix, an element past the end,
bytes that are not UTF-8, the wrong datatype) are 400s in the protocol's ``{"error": ...}`` body,
which tritonclient raises as InferenceServerException with the server's message.

gRPC (tritonclient and KServe) is in test_grpc_clients.py, on that module's server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from stowplan.models import LEXICON, LEXICON_LABELS

MODEL = "lexicon"
#: non-ASCII (one to three bytes a character), empty, unknown and mixed-case words
WORDS = ["猫", "", "cat", "Hund", "zebra", "pájaro", "Cat", "鳥"]


def _words(words: list[str] = WORDS) -> np.ndarray:
    return np.array(words, dtype=object).reshape(-1, 1)


def _expected(words: list[str]) -> tuple[list[int], list[str]]:
    ids = [LEXICON.get(w, -1) for w in words]
    return ids, [LEXICON_LABELS.get(i, "") for i in ids]


def _text(arr: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]


@pytest.fixture
def client(served: Any) -> th.InferenceServerClient:
    return th.InferenceServerClient(served.url, connection_timeout=30, network_timeout=30)


def test_metadata_and_config_say_bytes(client: th.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("class_id", "INT64"),
        ("label", "BYTES"),
    ]
    cfg = client.get_model_config(MODEL)
    assert cfg["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]
    assert [o["data_type"] for o in cfg["output"]] == ["TYPE_INT64", "TYPE_STRING"]


def test_tritonclient_binary_and_json_agree_with_onnxruntime(
    client: th.InferenceServerClient, served: Any
) -> None:
    x = _words()
    want = served.direct_all(MODEL, {"text": x})
    ids, labels = _expected(WORDS)
    assert want["class_id"].reshape(-1).tolist() == ids  # the reference itself is right
    assert _text(want["label"]) == labels
    answers: dict[str, tuple[list[int], list[str]]] = {}
    for binary_in in (True, False):
        for binary_out in (True, False, None):
            inp = th.InferInput("text", list(x.shape), "BYTES")
            # binary: tritonclient length-prefixes the UTF-8 bytes; JSON: a list of strings
            inp.set_data_from_numpy(x, binary_data=binary_in)
            outputs = (
                None
                if binary_out is None
                else [
                    th.InferRequestedOutput("class_id", binary_data=binary_out),
                    th.InferRequestedOutput("label", binary_data=binary_out),
                ]
            )
            result = client.infer(MODEL, [inp], outputs=outputs, request_id="s1")
            assert result.get_response()["id"] == "s1"
            got_ids = result.as_numpy("class_id")
            got_labels = result.as_numpy("label")
            assert got_ids is not None and got_labels is not None
            assert got_ids.dtype == np.int64 and got_ids.shape == (len(WORDS), 1)
            assert got_labels.shape == (len(WORDS), 1)
            answers[f"in={binary_in} out={binary_out}"] = (
                got_ids.reshape(-1).tolist(),
                _text(got_labels),
            )
    for path, got in answers.items():
        assert got == (ids, labels), path


def test_bytes_inputs_of_separate_requests_batch_together(
    client: th.InferenceServerClient,
) -> None:
    # one row, the largest batch (the model's max 64), and a batch of empty strings: each
    # request's rows come back as its own, whichever batch they ran in
    for words in (["犬"], [WORDS[i % len(WORDS)] for i in range(64)], ["", ""]):
        inp = th.InferInput("text", [len(words), 1], "BYTES")
        inp.set_data_from_numpy(_words(words))
        result = client.infer(MODEL, [inp])
        got = (result.as_numpy("class_id").reshape(-1).tolist(), _text(result.as_numpy("label")))
        assert got == _expected(words)


def _post(served: Any, header: dict[str, Any], tail: bytes) -> httpx.Response:
    head = json.dumps(header).encode()
    return httpx.post(
        f"http://{served.url}/v2/models/{MODEL}/infer",
        content=head + tail,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )


def _binary_header(rows: int, size: int) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [rows, 1],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


@pytest.mark.parametrize(
    ("rows", "tail", "fragment"),
    [
        pytest.param(1, b"\x03\0", "element 0 has a truncated 4-byte length prefix", id="prefix"),
        pytest.param(
            2, b"\x01\0\0\0a\x09\0\0\0abc", "element 1 declares 9 bytes but only 3", id="overrun"
        ),
        pytest.param(
            1, b"\x02\0\0\0\xff\xfe", "element 0 is not UTF-8 (invalid start byte", id="not-utf8"
        ),
        pytest.param(
            2, b"\x01\0\0\0a", "needs 2 BYTES elements, the binary data holds 1", id="too-few"
        ),
    ],
)
def test_malformed_binary_bytes_are_400_naming_the_input(
    served: Any, rows: int, tail: bytes, fragment: str
) -> None:
    r = _post(served, _binary_header(rows, len(tail)), tail)
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error"} and "input 'text'" in body["error"], body
    assert fragment in body["error"], body


def test_not_utf8_asked_as_json_output_is_refused_before_running(served: Any) -> None:
    # JSON cannot carry these bytes (binary_data_output false), and ONNX Runtime's strings are
    # text: the input is refused, not passed on as its repr or answered with a broken string
    tail = b"\x01\0\0\0\x80"
    header = {**_binary_header(1, len(tail)), "parameters": {"binary_data_output": False}}
    r = _post(served, header, tail)
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(
            lambda: _fp32_text(),
            "input 'text' has datatype 'FP32'; the model expects 'BYTES'",
            id="wrong-datatype",
        ),
        pytest.param(
            lambda: _json_numbers(),
            "BYTES data in JSON must be strings",
            id="numbers-as-bytes",
        ),
    ],
)
def test_tritonclient_raises_the_servers_message(
    client: th.InferenceServerClient, make: Any, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(MODEL, [make()])
    assert exc.value.status() == "400"
    assert fragment in (exc.value.message() or "")


def _fp32_text() -> th.InferInput:
    inp = th.InferInput("text", [1, 1], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
    return inp


def _json_numbers() -> th.InferInput:
    inp = th.InferInput("text", [2, 1], "BYTES")
    inp._data = [1, 2]  # what a hand-written JSON client might send; the client's API won't
    return inp


# ---- KServe's InferenceRESTClient (its own interpreter: kserve's protobuf registrations) --------

KSERVE_REST = textwrap.dedent(
    r"""
    import asyncio, json, sys
    import httpx
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    url, words = sys.argv[1], json.loads(sys.stdin.read())

    async def main():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60, retries=1))
        x = np.array(words, dtype=object).reshape(-1, 1)
        out = {"answers": {}, "errors": {}}
        for binary_in in (True, False):
            for binary_out in (True, False):
                inp = InferInput("text", list(x.shape), "BYTES")
                inp.set_data_from_numpy(x, binary_data=binary_in)
                outputs = [RequestedOutput(n, parameters={"binary_data": binary_out})
                           for n in ("class_id", "label")]
                res = await client.infer(url, InferRequest("lexicon", [inp], request_id="k1",
                                                           request_outputs=outputs),
                                         model_name="lexicon")
                got = {o.name: o.as_numpy() for o in res.outputs}
                out["answers"][f"in={binary_in} out={binary_out}"] = {
                    "id": res.id,
                    "datatypes": [o.datatype for o in res.outputs],
                    "class_id": got["class_id"].reshape(-1).tolist(),
                    "label": [v.decode() if isinstance(v, bytes) else str(v)
                              for v in got["label"].reshape(-1)],
                }
        wrong = InferInput("text", [1, 1], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 1), np.float32))
        try:
            await client.infer(url, InferRequest("lexicon", [wrong]), model_name="lexicon")
            out["errors"]["wrong-datatype"] = None
        except httpx.HTTPStatusError as exc:
            out["errors"]["wrong-datatype"] = [exc.response.status_code, exc.response.json()]
        await client.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_kserve_rest_client_binary_and_json(served: Any) -> None:
    run = subprocess.run(
        [sys.executable, "-c", KSERVE_REST, f"http://{served.url}"],
        input=json.dumps(WORDS),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    ids, labels = _expected(WORDS)
    assert len(out["answers"]) == 4
    for path, got in out["answers"].items():
        assert got["id"] == "k1" and got["datatypes"] == ["INT64", "BYTES"], path
        assert (got["class_id"], got["label"]) == (ids, labels), path
    status, body = out["errors"]["wrong-datatype"]
    assert status == 400 and "the model expects 'BYTES'" in body["error"]
