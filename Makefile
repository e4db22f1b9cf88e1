# relay365: `make test` builds .venv from a bare Python 3.11+ and runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck imports pytest unit integration e2e tools bench clean screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("relay365 needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# The import contracts of [tool.importlinter] in pyproject.toml: the layers of relay365, no
# cycle, m365sim apart.
imports: $(STAMP)
	$(BIN)/lint-imports

# Real peers the tests drive (Debian packages): swaks (SMTP), PHP with PHPMailer (WordPress's
# mailer), systemd-analyze (the generated unit), chromium for Playwright (the admin page's
# browser tests; `playwright install` downloads are not used) with a font for its screenshots.
DEB_TOOLS := swaks php-cli libphp-phpmailer systemd chromium fonts-dejavu-core
tools:
	@if ! command -v swaks >/dev/null || ! command -v php >/dev/null || ! command -v systemd-analyze >/dev/null \
	    || ! command -v chromium >/dev/null || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
	    || [ ! -f /usr/share/php/libphp-phpmailer/autoload.php ]; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_TOOLS) >/dev/null; } \
	  || { echo "make test needs: apt-get install $(DEB_TOOLS)"; exit 1; }; fi

# Tests in parallel, one worker per core (pytest-xdist); loadgroup keeps each xdist_group on one
# worker (the modules whose relay or chromium is module-scoped start it once).
PARALLEL := -n auto --dist loadgroup
# Bytecode is cached under .venv even where PYTHONDONTWRITEBYTECODE is set: otherwise every
# xdist worker compiles and assertion-rewrites every test module again (half its 8 s start).
PYTEST := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache $(BIN)/pytest

pytest: $(STAMP) tools
	$(PYTEST) -q $(PARALLEL)

test: lint typecheck imports pytest

# One layer at a time: tests/unit needs no sockets, no m365sim and none of the tools.
unit: $(STAMP)
	$(PYTEST) -q tests/unit

integration: $(STAMP)
	$(PYTEST) -q $(PARALLEL) tests/integration

e2e: $(STAMP) tools
	$(PYTEST) -q $(PARALLEL) tests/e2e

# The admin page's screenshots in docs/screenshots/ (the README shows them), from the browser tests.
screenshots: $(STAMP) tools
	RELAY365_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/pytest -q tests/e2e/relay365/test_web_browser.py

# The whole system on its embedded defaults: SQLite, and m365sim in place of Microsoft 365.
demo: $(STAMP)
	$(BIN)/relay365 demo

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
