#!/bin/sh
# certbot deploy hook for Facteur (doc/deploy.md): install as
# /etc/letsencrypt/renewal-hooks/deploy/facteur. certbot runs it after each
# successful renewal, with RENEWED_LINEAGE set to the certificate's live
# directory. It copies the chain and key where the facteur user can read
# them (it cannot read /etc/letsencrypt/archive) and has Facteur reload
# them (SIGHUP): open connections stay, new ones get the new certificate.
set -eu

# Only the certificate Facteur serves.
case "$RENEWED_LINEAGE" in
*/mail.example.org) ;;
*) exit 0 ;;
esac

dest=${FACTEUR_TLS_DIR:-/etc/facteur/tls}
group=${FACTEUR_GROUP:-facteur}

# Each file is written beside its place, then renamed over it: Facteur
# never reads half a file.
for name in fullchain.pem privkey.pem; do
    install -m 0640 -g "$group" "$RENEWED_LINEAGE/$name" "$dest/.$name.new"
    mv -f "$dest/.$name.new" "$dest/$name"
done

# Under Nomad, instead: nomad var put -force nomad/jobs/facteur/tls \
#   fullchain=@"$dest/fullchain.pem" privkey=@"$dest/privkey.pem"
${FACTEUR_RELOAD:-systemctl reload facteur}
