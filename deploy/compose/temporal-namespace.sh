#!/bin/sh
# One-shot (temporalio/admin-tools), once the server answers: ordersaga's namespace and the
# search attributes the saga keeps current (ordersaga/domain.py: CustomerId, OrderStatus).
# Safe to run again.
set -eu
: "${TEMPORAL_ADDRESS:?}" "${NAMESPACE:?}"
retention="${RETENTION:-7d}"

attempt=0
until temporal operator cluster health >/dev/null 2>&1; do
    attempt=$((attempt + 1))
    [ "$attempt" -lt 60 ] || { echo "Temporal at $TEMPORAL_ADDRESS is not healthy" >&2; exit 1; }
    sleep 2
done

temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1 ||
    temporal operator namespace create --namespace "$NAMESPACE" --retention "$retention"

for attribute in CustomerId OrderStatus; do
    if ! temporal operator search-attribute list --namespace "$NAMESPACE" | grep -qw "$attribute"; then
        temporal operator search-attribute create --namespace "$NAMESPACE" \
            --name "$attribute" --type Keyword
    fi
done
echo "namespace $NAMESPACE with search attributes CustomerId, OrderStatus"
