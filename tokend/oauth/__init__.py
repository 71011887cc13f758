"""The OAuth layer: requests and answers of Factorial's (Doorkeeper's) token endpoint.

``protocol`` builds the authorize link and the token/revoke requests and parses the
answers into :class:`tokend.model.Token` or the error tree; the seed client
(:mod:`tokend.factorial`) and the engine send them. ``deadline`` is the blocking
client whose requests end by an overall deadline, for a refresh sent from a worker
thread. May import only ``tokend.model`` and ``tokend.errors`` (and httpx, httpcore).
"""
