"""Search attributes of Delivery workflows, for operators filtering in the Temporal UI (DESIGN §3).

Few and small, within SQL visibility's limits (10 Keyword, 3 each of the other types): state, account,
the recipient domains still pending, held, next attempt, attempts. Domains only, never addresses: search
attributes are stored unencrypted.

Queries an operator types in the UI, for example:
  TempostHeld = true AND TempostRcptDomains = 'example.com'
  TempostState = 'deferred' AND TempostAttempts >= 3
  TempostNextAttempt < '2026-12-01T00:00:00Z' AND ExecutionStatus = 'Running'
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

STATE = SearchAttributeKey.for_keyword("TempostState")
ACCOUNT = SearchAttributeKey.for_keyword("TempostAccount")
RCPT_DOMAINS = SearchAttributeKey.for_keyword_list("TempostRcptDomains")
HELD = SearchAttributeKey.for_bool("TempostHeld")
NEXT_ATTEMPT = SearchAttributeKey.for_datetime("TempostNextAttempt")
ATTEMPTS = SearchAttributeKey.for_int("TempostAttempts")

ALL = (STATE, ACCOUNT, RCPT_DOMAINS, HELD, NEXT_ATTEMPT, ATTEMPTS)

# The temporal CLI's names for the types, for `temporal server start-dev --search-attribute NAME=TYPE`.
CLI_TYPES = {
    STATE.name: "Keyword",
    ACCOUNT.name: "Keyword",
    RCPT_DOMAINS.name: "KeywordList",
    HELD.name: "Bool",
    NEXT_ATTEMPT.name: "Datetime",
    ATTEMPTS.name: "Int",
}
