FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY gateway gateway
COPY tenants tenants
COPY billing billing
COPY migrations migrations
RUN pip install --no-cache-dir --no-deps .
USER nobody
EXPOSE 8080
CMD ["maas", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "4"]
