# Test stand-in for the official redis:7.4-bookworm image: Debian's redis-server, run as `redis`, data
# in /data (what docker-compose.yml expects of the official image).
ARG BASE
FROM ${BASE}
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
