"""A Flower configuration file in the image (``/app/flower_conf.py``), for ``celery flower --conf``:
its basic auth from Plant's ``PLANT_FLOWER_BASIC_AUTH``, or the file ``PLANT_FLOWER_BASIC_AUTH_FILE``
names (compose's secret), so that the password stays out of Flower's environment and command line.

Flower runs it (tornado's ``parse_config_file``) and takes each name that is one of its options.
docker/entrypoint.sh passes it only when ``FLOWER_BASIC_AUTH`` is not set; without credentials it
stops Flower rather than let it serve without a password. (Not named ``flowerconfig.py``: Flower
reads a file of that name in its working directory, /app, unasked.)
"""

from models.settings import load_settings

_credentials = load_settings().flower_basic_auth
if _credentials is None or not _credentials.get_secret_value().strip():
    raise SystemExit("flower_conf.py: set PLANT_FLOWER_BASIC_AUTH_FILE (or FLOWER_BASIC_AUTH): Flower needs a user:password")
basic_auth = [_credentials.get_secret_value().strip()]
