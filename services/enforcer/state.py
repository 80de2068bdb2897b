"""What the enforcer's decision path asks the enforcement state: the contract's
projection (`services.actions.projection.ActionTable`, filled by its consumer)
answering in the decision's own terms."""

from __future__ import annotations

from services.actions.projection import ActionTable
from services.enforcer.decision import EnforcementVerdict
from services.enforcer.policy import Action


class ActionLookups:
    """The screener's view of the applied actions. Lookups never await."""

    def __init__(self, table: ActionTable) -> None:
        self.table = table

    def verdict(self, tenant: str, account_hmac: str, model: str) -> EnforcementVerdict | None:
        block = self.table.blocking(tenant, account_hmac, model)
        return EnforcementVerdict(Action.BLOCK, block.code, block.detail) if block is not None else None

    def forced_categories(self, tenant: str) -> frozenset[str]:
        return self.table.forced_categories(tenant)

    def account_limit(self, tenant: str, account_hmac: str) -> int | None:
        """Requests per minute an account is throttled to, if it is."""
        return self.table.account_limit(tenant, account_hmac)
