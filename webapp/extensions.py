"""The web's Flask extensions (login, CSRF), created once here and bound to an app in create_app().

The database handle is the core's: webapp.core.database.db.
"""

from flask_login import LoginManager
from flask_wtf import CSRFProtect

login_manager = LoginManager()
csrf = CSRFProtect()
