"""Bad input gets a clear gRPC status and message, never a crash: empty batch, too many
texts, oversize text, unknown model (the message lists the models), a bad or unloaded
"name:version", a pinned cascade, and invalid UTF-8 sent as raw bytes."""

from __future__ import annotations

import grpc
import pytest
from safeguards.v1 import classifier_pb2

from tests.integration.classifier.conftest import CASCADE, MINILM, NGRAM, SERVICE, Client


def rejected(client: Client, texts, models=()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        client.classify(texts, models)
    return err.value


def test_empty_batch_is_invalid_argument(client: Client) -> None:
    err = rejected(client, [], [NGRAM])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "texts is empty: send at least one text to classify"


def test_too_many_texts_is_invalid_argument(client: Client) -> None:
    err = rejected(client, ["hi"] * 65, [NGRAM])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "65 texts in one request; the limit is 64 (--max-batch-texts)"


def test_oversize_text_is_invalid_argument_naming_its_index_and_size(client: Client) -> None:
    err = rejected(client, ["fine", "é" * 20000], [NGRAM])  # 40000 UTF-8 bytes
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "texts[1] is 40000 bytes; the limit is 32768 bytes (--max-text-bytes)"


def test_unknown_model_is_not_found_and_lists_the_models(client: Client) -> None:
    err = rejected(client, ["hi"], ["no_such_model"])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == (
        f"unknown model 'no_such_model'; available models: ngram_shadowed, {CASCADE}, {MINILM}, {NGRAM}"
    )


@pytest.mark.parametrize(
    ("model", "code", "details"),
    [
        (f"{NGRAM}:latest", "INVALID_ARGUMENT", f"model '{NGRAM}:latest': version must be a positive integer"),
        (f"{NGRAM}:0", "INVALID_ARGUMENT", f"model '{NGRAM}:0': version must be a positive integer"),
        (":1", "INVALID_ARGUMENT", "model ':1': expected NAME or NAME:VERSION"),
        (f"{NGRAM}:7", "NOT_FOUND", f"model '{NGRAM}' version 7 is not loaded; loaded versions: [1]"),
        (f"{CASCADE}:1", "INVALID_ARGUMENT", f"model '{CASCADE}:1': '{CASCADE}' is a cascade; it has no versions"),
    ],
)
def test_bad_model_versions_are_rejected_with_the_reason(client: Client, model: str, code: str, details: str) -> None:
    err = rejected(client, ["hi"], [model])
    assert err.code() == grpc.StatusCode[code]
    assert err.details().startswith(details), err.details()


def test_invalid_utf8_sent_as_raw_bytes_is_invalid_argument(client: Client) -> None:
    call = client.channel.unary_unary(
        f"/{SERVICE}/Classify",
        request_serializer=lambda b: b,
        response_deserializer=classifier_pb2.ClassifyResponse.FromString,
    )
    bad_text = b"ok \xff\xfe not utf-8"
    raw = b"\x0a" + bytes([len(bad_text)]) + bad_text  # field 1 (texts), length-delimited
    with pytest.raises(grpc.RpcError) as err:
        call(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("malformed request:")
    # The same framing with valid UTF-8 is served: the framing above is right.
    good = b"ok fine"
    assert len(call(b"\x0a" + bytes([len(good)]) + good, timeout=10).results) == 1


def test_the_service_keeps_serving_after_bad_input(client: Client) -> None:
    assert client.classify(["still here"], [NGRAM]).results[0].models[0].model == NGRAM
