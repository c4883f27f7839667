"""The README stays true: its configuration reference is what the code declares, and its
receiver-side signature example verifies what the webhook sink signs."""

from __future__ import annotations

import re
from pathlib import Path

from relay import signing
from relay.cli import config_reference

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_configuration_reference_matches_the_declared_options() -> None:
    match = re.search(
        r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", README, re.S
    )
    assert match, "README.md lost its config-reference markers"
    assert match.group(1).strip() == config_reference().strip(), (
        "README.md's configuration reference is stale: paste the output of "
        "`relay config-reference` between the markers"
    )


def test_receiver_example_verifies_a_signed_delivery() -> None:
    section = README[README.index("### Signed webhooks") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)
    verify = namespace["verify"]
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"EventName":"s3:ObjectCreated:Put"}'
    headers = signing.sign([signing.secret_key(secret)], "0123abcd", body)
    assert verify(secret, headers, body) is True  # type: ignore[operator]
    assert verify(secret, headers, body + b" ") is False  # type: ignore[operator]
