"""Fixtures the fault tests share."""
import pytest

from tests.test_labels import _dinov2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A weights DIR with a tiny random dinov2 (save_pretrained, loaded by `fair label --weights DIR`)."""
  root = tmp_path_factory.mktemp("w")
  _dinov2().save_pretrained(root / "dinov2")
  return root
