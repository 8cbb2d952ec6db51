# Facteur beside Garage on every mail node of a Nomad cluster (doc/deploy.md).
#
# One allocation of each group per client node with meta.mail = "true":
# Garage stores, Facteur serves IMAP and LMTP and talks to the Garage node
# of its own machine (127.0.0.1:3900). No containers: the `exec` driver
# runs the binaries installed on the host (/usr/local/bin/garage and
# /usr/local/bin/facteur) in a chroot with cgroup limits.
#
# Before the first `nomad job run facteur.nomad.hcl`:
#   - on every mail node, in the Nomad client configuration:
#       client {
#         meta { mail = "true" }
#         host_volume "garage-meta" { path = "/var/lib/garage/meta" }
#         host_volume "garage-data" { path = "/var/lib/garage/data" }
#       }
#     and a `facteur` user and group with uid and gid 990 (the secret
#     files below are rendered for them);
#   - the secrets, in Nomad Variables, readable by this job only:
#       nomad var put nomad/jobs/facteur \
#         cluster_secret=$(head -c 32 /dev/urandom | xxd -p -c 64) \
#         garage_rpc_secret=$(openssl rand -hex 32) \
#         s3_access_key_id=GK... s3_secret_access_key=...
#       nomad var put nomad/jobs/facteur/tls \
#         fullchain=@fullchain.pem privkey=@privkey.pem
#     (the S3 key comes from `garage key create facteur` once Garage runs;
#     the certificate is renewed by certbot and put there again by its
#     deploy hook, see doc/deploy.md: every Facteur then gets SIGHUP).
#   - Garage's layout (zones, capacities) is made once by hand, as in
#     doc/deploy-multisite.md; the `mail` bucket and the key likewise.

job "facteur" {
  type        = "system"
  datacenters = ["*"]

  constraint {
    attribute = "${meta.mail}"
    value     = "true"
  }

  # One node at a time, so that the other sites keep serving.
  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "garage" {
    volume "meta" {
      type   = "host"
      source = "garage-meta"
    }
    volume "data" {
      type   = "host"
      source = "garage-data"
    }

    network {
      mode = "host"
      port "rpc" { static = 3901 }
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "10s"
      mode     = "delay"
    }

    task "garage" {
      driver = "exec"
      config {
        command = "/usr/local/bin/garage"
        args    = ["-c", "${NOMAD_TASK_DIR}/garage.toml", "server"]
      }

      volume_mount {
        volume      = "meta"
        destination = "/var/lib/garage/meta"
      }
      volume_mount {
        volume      = "data"
        destination = "/var/lib/garage/data"
      }

      template {
        destination = "local/garage.toml"
        change_mode = "restart"
        data        = <<-EOT
          metadata_dir = "/var/lib/garage/meta"
          data_dir = "/var/lib/garage/data"
          db_engine = "lmdb"
          # A copy of the metadata database every 6 hours, in
          # metadata_dir/snapshots: what a node is restored from.
          metadata_auto_snapshot_interval = "6h"
          replication_factor = 3
          consistency_mode = "consistent"
          rpc_bind_addr = "[::]:3901"
          rpc_public_addr = "{{ env "attr.unique.network.ip-address" }}:3901"
          rpc_secret_file = "{{ env "NOMAD_SECRETS_DIR" }}/rpc-secret"

          [s3_api]
          # Only the Facteur of this machine talks to this node.
          api_bind_addr = "127.0.0.1:3900"
          s3_region = "garage"

          [admin]
          api_bind_addr = "127.0.0.1:3903"
        EOT
      }

      template {
        destination = "secrets/rpc-secret"
        perms       = "0600"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/facteur" }}{{ .garage_rpc_secret }}{{ end }}
        EOT
      }

      resources {
        cpu        = 500
        memory     = 512
        memory_max = 1024
      }
    }
  }

  group "facteur" {
    network {
      mode = "host"
      port "imap" { static = 143 }
      port "imaps" { static = 993 }
      port "lmtp" { static = 24 }
      port "http" { static = 9180 }
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "5s"
      mode     = "delay"
    }

    service {
      name     = "facteur-imaps"
      provider = "nomad"
      port     = "imaps"

      # 200 when the store answers, 503 otherwise (doc/deploy.md).
      check {
        name     = "store reachable"
        type     = "http"
        port     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"
      }
      check {
        name     = "imaps accepts"
        type     = "tcp"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "facteur" {
      driver = "exec"
      user   = "facteur"
      config {
        command = "/usr/local/bin/facteur"
        args    = ["--config", "${NOMAD_TASK_DIR}/facteur.toml", "serve"]
        # Ports 24, 143 and 993 as the facteur user (Nomad 1.5.3 and later
        # give a non-root exec task the capabilities of cap_add).
        cap_add = ["net_bind_service"]
      }

      # SIGTERM, then running connections get 10 s to finish.
      kill_signal  = "SIGTERM"
      kill_timeout = "20s"

      env {
        MALLOC_ARENA_MAX  = "2"
        _RJEM_MALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
      }

      template {
        destination = "local/facteur.toml"
        change_mode = "restart"
        data        = <<-EOT
          cluster_secret = { file = "../secrets/cluster-secret" }

          [store]
          backend = "s3"

          [store.s3]
          endpoint = "http://127.0.0.1:3900"
          region = "garage"
          bucket = "mail"
          access_key_id = "{{ with nomadVar "nomad/jobs/facteur" }}{{ .s3_access_key_id }}{{ end }}"
          secret_access_key = { file = "../secrets/s3-secret-access-key" }

          [directory]
          backend = "ldap"

          [directory.ldap]
          urls = ["ldaps://ldap.example.org"]
          base_dn = "dc=example,dc=org"
          user_filter = "(&(objectClass=inetOrgPerson)(uid=%u))"
          address_filter = "(&(objectClass=inetOrgPerson)(mail=%a))"

          # Reachable by the Nomad client's check and by Prometheus: keep
          # port 9180 to the internal network.
          [http]
          listen = "{{ env "NOMAD_ADDR_http" }}"

          [lmtp]
          listen = ["127.0.0.1:24"]

          [imap]
          starttls_listen = ["0.0.0.0:143"]
          tls_listen = ["0.0.0.0:993"]
          certificate = "../secrets/fullchain.pem"
          private_key = "../secrets/privkey.pem"
        EOT
      }

      template {
        destination = "secrets/cluster-secret"
        perms       = "0600"
        uid         = 990
        gid         = 990
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/facteur" }}{{ .cluster_secret }}{{ end }}
        EOT
      }

      template {
        destination = "secrets/s3-secret-access-key"
        perms       = "0600"
        uid         = 990
        gid         = 990
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/facteur" }}{{ .s3_secret_access_key }}{{ end }}
        EOT
      }

      # A renewed certificate reaches Facteur without a restart: Nomad
      # rewrites the files and sends SIGHUP, and Facteur reloads them
      # (open connections keep theirs; a broken pair is logged and the
      # previous one kept).
      template {
        destination   = "secrets/fullchain.pem"
        perms         = "0600"
        uid           = 990
        gid           = 990
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          {{- with nomadVar "nomad/jobs/facteur/tls" }}{{ .fullchain }}{{ end }}
        EOT
      }
      template {
        destination   = "secrets/privkey.pem"
        perms         = "0600"
        uid           = 990
        gid           = 990
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          {{- with nomadVar "nomad/jobs/facteur/tls" }}{{ .privkey }}{{ end }}
        EOT
      }

      resources {
        cpu        = 1000
        memory     = 512
        memory_max = 2048
      }
    }
  }
}
