"""Hub repo ids: one check for every flag that names a Hub repo, so that nothing is staged or shipped under an id
the Hub would refuse."""
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = ['check_repo_id']


def check_repo_id(repo_id: str, flag: str = '--repo-id') -> None:
    """Raise ValueError unless ``repo_id`` is ``ORG/NAME`` by the Hub's own rules (``validate_repo_id``).

    A bare ``NAME`` passes the Hub's check (it means the token's namespace) but not this one: timm loads
    ``hf-hub:ORG/NAME`` and a zoo entry must name its owner.
    """
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'{flag} {repo_id!r}: pass ORG/NAME (timm loads hf-hub:ORG/NAME)')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:  # names the rule, not the flag
        raise ValueError(f'{flag} {repo_id!r}: {e}') from None
