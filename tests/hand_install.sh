#!/usr/bin/env bash
# Installs refapp the way an operator would without fleetdeck (tests only): its own paths under /srv and
# /etc/refapp, one env file with every setting and secret, a hand-written systemd unit.
#   hand_install.sh ARTIFACT VERSION   (stdin: "DB_PASSWORD API_TOKEN SMTP_PASSWORD")
set -euo pipefail
artifact=$1 version=$2
read -r db_password api_token smtp_password

getent group refapp >/dev/null || groupadd --system refapp
id refapp >/dev/null 2>&1 || useradd --system --gid refapp --home-dir /srv/refapp --shell /usr/sbin/nologin refapp
mkdir -p "/srv/refapp/releases/$version" /srv/refapp/shared/data
tar -xzf "$artifact" -C "/srv/refapp/releases/$version" --strip-components=1
ln -sfn "releases/$version" /srv/refapp/current
chown refapp:refapp /srv/refapp/shared/data

systemctl start postgresql
runuser -u postgres -- psql -q -c "CREATE ROLE refapp LOGIN PASSWORD '$db_password'"
runuser -u postgres -- createdb -O refapp refapp

install -d -m 0750 /etc/refapp
(umask 077 && cat >/etc/refapp/refapp.env <<ENV
# refapp, installed by hand
REFAPP_LISTEN=127.0.0.1:8080
REFAPP_INSTANCE=shop
REFAPP_DATA_DIR=/srv/refapp/shared/data
REFAPP_DB_HOST=127.0.0.1
REFAPP_DB_PORT=5432
REFAPP_DB_NAME=refapp
REFAPP_DB_USER=refapp
REFAPP_DB_PASSWORD=$db_password
REFAPP_API_TOKEN="$api_token"
REFAPP_LOG_LEVEL=WARNING
SHOP_SUPPORT_EMAIL=ops@shop.example
SHOP_SMTP_PASSWORD=$smtp_password
ENV
)
cat >/etc/systemd/system/refapp.service <<'UNIT'
[Unit]
Description=refapp (installed by hand)
After=network-online.target postgresql.service

[Service]
User=refapp
Group=refapp
EnvironmentFile=/etc/refapp/refapp.env
WorkingDirectory=/srv/refapp/shared
ExecStart=/srv/refapp/current/bin/refapp serve
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemd-run --wait --pipe --quiet --collect --property=User=refapp \
  --property=EnvironmentFile=/etc/refapp/refapp.env /srv/refapp/current/bin/refapp migrate >/dev/null
systemctl daemon-reload
systemctl enable --now refapp
for _ in $(seq 30); do
  curl -sf http://127.0.0.1:8080/health >/dev/null && exit 0
  sleep 1
done
echo "refapp did not become healthy" >&2
exit 1
